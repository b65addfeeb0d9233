using SdLora.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Sampling;

public sealed class SamplerBehaviourTests
{
    private static readonly string[] AllShortNames = ["euler_a", "euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lms", "plms", "heun", "ddpm"];

    /// <summary>A model that knows the answer: the data distribution is the single point <paramref name="x0"/>.</summary>
    private static Denoiser PerfectModel(NoiseSchedule schedule, Tensor x0) => (input, t) =>
    {
        double acp = schedule.AlphaCumprodAt((int)Math.Round(t.item<float>()));
        double a = Math.Sqrt(acp), s = Math.Sqrt(1 - acp);
        var eps = (input - x0 * a) / s;
        return schedule.PredictionType == PredictionType.Epsilon ? eps : eps * a - x0 * s;
    };

    private static NoiseSchedule Schedule(PredictionType p, bool setAlphaToOne = false) =>
        new(predictionType: p, setAlphaToOne: setAlphaToOne);

    [Theory]
    [InlineData("euler")]
    [InlineData("euler_a")]
    [InlineData("heun")]
    [InlineData("lms")]
    [InlineData("ddim")]
    [InlineData("dpmpp_2m")]
    [InlineData("ddpm")]
    public void Epsilon_and_v_prediction_give_the_same_trajectory_for_the_same_denoiser(string name)
    {
        using var scope = torch.NewDisposeScope();
        var x0 = torch.randn([1, 4, 4, 4], generator: new torch.Generator(1)) * 0.5;
        var initial = torch.randn([1, 4, 4, 4], generator: new torch.Generator(2));
        var draws = torch.randn([40, 1, 4, 4, 4], generator: new torch.Generator(3));
        Tensor Run(PredictionType p)
        {
            var schedule = Schedule(p);
            return SamplerCatalog.Get(name).Sample(PerfectModel(schedule, x0), initial, schedule, 10, new FixedNoise(draws));
        }
        var eps = Run(PredictionType.Epsilon);
        var v = Run(PredictionType.VPrediction);
        Fixtures.AssertClose(eps, v, 1e-4, $"{name}: v vs epsilon");
        Fixtures.AssertClose(ExactEnd(name, schedule: Schedule(PredictionType.Epsilon), x0, initial, 10), eps, 1e-5, $"{name}: result vs the exact end point");
    }

    /// <summary>
    /// Where an exact solver of the probability-flow ODE ends for a data distribution that is the single point
    /// <paramref name="x0"/>: the noise direction <c>eps = (x_T - a_T x0) / s_T</c> stays fixed along the path, so the
    /// end is <c>a_end x0 + s_end eps</c>. Samplers that run to sigma 0 end on x0 itself; DDIM, PLMS and the DPM-Solver
    /// family stop at t = 0 (sigma ~0.03), as diffusers does. Computed from the schedule, not from the samplers.
    /// </summary>
    private static Tensor ExactEnd(string name, NoiseSchedule schedule, Tensor x0, Tensor initial, int steps)
    {
        if (name is not ("ddim" or "plms" or "dpmpp_2m" or "dpmpp_2m_karras")) return x0;
        // The first model call sees x_T = initial (their initial noise scale is 1) at the plan's first sigma.
        double sigmaStart = name == "dpmpp_2m_karras" ? schedule.SigmaAt(schedule.NumTrainTimesteps - 1) : schedule.SigmaAt(schedule.SpacedTimesteps(steps + (name == "dpmpp_2m" ? 1 : 0))[0]);
        double sigmaEnd = schedule.SigmaAt(0);
        static (double A, double S) Coefficients(double sigma) { double a = 1 / Math.Sqrt(1 + sigma * sigma); return (a, sigma * a); }
        var (aStart, sStart) = Coefficients(sigmaStart);
        var (aEnd, sEnd) = Coefficients(sigmaEnd);
        var noiseDirection = (initial - aStart * x0) / sStart;
        return aEnd * x0 + sEnd * noiseDirection;
    }

    [Theory]
    [InlineData("plms")]
    [InlineData("dpmpp_2m_karras")]
    public void Multistep_samplers_reach_the_data_point_with_a_perfect_model(string name)
    {
        using var scope = torch.NewDisposeScope();
        var schedule = Schedule(PredictionType.Epsilon);
        var x0 = torch.randn([1, 4, 4, 4], generator: new torch.Generator(1)) * 0.5;
        var initial = torch.randn([1, 4, 4, 4], generator: new torch.Generator(2));
        var result = SamplerCatalog.Get(name).Sample(PerfectModel(schedule, x0), initial, schedule, 20);
        // Karras sigmas fall between training timesteps, but the model is called at the rounded timestep (as diffusers
        // does), so the perfect model answers for a noise level up to half a step away: a bounded, expected error.
        double tol = name == "dpmpp_2m_karras" ? 5e-3 : 1e-5;
        Fixtures.AssertClose(ExactEnd(name, schedule, x0, initial, 20), result, tol, $"{name}: result vs the exact end point");
    }

    [Fact]
    public void Ddim_with_eta_1_is_ddpm()
    {
        // DDIM paper eq. 16: with sigma_t = the DDPM posterior std the generative process is DDPM's.
        using var scope = torch.NewDisposeScope();
        using var file = SdLora.IO.SafetensorsFile.Open(Fixtures.CopiedSet("schedulers.safetensors"));
        var schedule = Schedule(PredictionType.Epsilon, setAlphaToOne: true); // DDPM ends at alpha 1 too
        var initial = file.Load("initial_noise");
        var noise = file.Load("ddpm.noise");
        var ddim = new DdimSampler(eta: 1).Sample(SchedulerGoldenTests.FakeModel, initial, schedule, 20, new FixedNoise(noise));
        var ddpm = new DdpmSampler().Sample(SchedulerGoldenTests.FakeModel, initial, schedule, 20, new FixedNoise(noise));
        Fixtures.AssertClose(ddpm, ddim, 1e-5, "DDIM eta 1 vs DDPM");
    }

    [Fact]
    public void Heun_calls_the_model_twice_per_step_except_the_last()
    {
        using var scope = torch.NewDisposeScope();
        var schedule = SchedulerGoldenTests.Sd15Schedule();
        var sampler = SamplerCatalog.Get("heun");
        var plan = sampler.Plan(schedule, 5);
        Assert.Equal(new double[] { 801, 601, 601, 401, 401, 201, 201, 1, 1 }, plan.Timesteps);
        var seen = new List<double>();
        sampler.Sample((x, t) => { seen.Add(t.item<float>()); return x * 0.1; }, torch.zeros(1, 4, 2, 2), schedule, 5);
        Assert.Equal(plan.Timesteps, seen);
    }

    [Fact]
    public void Cancellation_stops_between_model_calls()
    {
        using var scope = torch.NewDisposeScope();
        using var cts = new CancellationTokenSource();
        int calls = 0;
        var progress = new SyncProgress<SamplingProgress>(p => { if (p.Step == 3) cts.Cancel(); });
        Assert.Throws<OperationCanceledException>(() => SamplerCatalog.Get("euler_a").Sample(
            (x, t) => { calls++; return x * 0.1; }, torch.randn(1, 4, 4, 4), SchedulerGoldenTests.Sd15Schedule(), 20,
            new SeededNoise(1), progress, cts.Token));
        Assert.Equal(3, calls);
    }

    [Theory]
    [InlineData("euler_a")]
    [InlineData("euler")]
    [InlineData("ddim")]
    [InlineData("dpmpp_2m")]
    [InlineData("dpmpp_2m_karras")]
    [InlineData("lms")]
    [InlineData("plms")]
    [InlineData("heun")]
    [InlineData("ddpm")]
    public void Progress_and_step_callback_report_every_model_call(string name)
    {
        using var scope = torch.NewDisposeScope();
        var schedule = SchedulerGoldenTests.Sd15Schedule();
        var sampler = SamplerCatalog.Get(name);
        var plan = sampler.Plan(schedule, 10);
        var reports = new List<SamplingProgress>();
        var steps = new List<(int Index, int Total, double Timestep)>();
        int calls = 0;
        sampler.Sample((x, t) => { calls++; return x * 0.1; }, torch.randn(1, 4, 4, 4), schedule, 10, new SeededNoise(3),
            new SyncProgress<SamplingProgress>(reports.Add), onStep: s => steps.Add((s.Index, s.Total, s.Timestep)));
        Assert.Equal(plan.ModelCalls, calls);
        Assert.Equal(Enumerable.Range(1, calls), reports.Select(r => r.Step));
        Assert.All(reports, r => Assert.Equal(calls, r.Total));
        Assert.Equal(plan.Timesteps, reports.Select(r => r.Timestep));
        Assert.Equal(Enumerable.Range(0, calls), steps.Select(s => s.Index));
        Assert.All(steps, s => Assert.Equal(calls, s.Total));
        Assert.Equal(plan.Timesteps, steps.Select(s => s.Timestep));
    }

    [Fact]
    public void Sampling_holds_no_tensors_beyond_the_result()
    {
        using var scope = torch.NewDisposeScope();
        var initial = torch.randn(1, 4, 8, 8);
        var schedule = SchedulerGoldenTests.Sd15Schedule();
        foreach (var name in AllShortNames)
        {
            int before = scope.DisposablesCount, peak = 0;
            // Multistep samplers keep at most 4 past outputs; nothing may grow with the step count.
            var result = SamplerCatalog.Get(name).Sample((x, t) => x * 0.1, initial, schedule, 30, new SeededNoise(7),
                onStep: _ => peak = Math.Max(peak, scope.DisposablesCount - before));
            Assert.True(scope.DisposablesCount - before == 1, $"{name}: {scope.DisposablesCount - before} tensors left in the caller's scope");
            Assert.True(peak <= 8, $"{name}: {peak} tensors held between steps");
            result.Dispose();
        }
    }

    [Fact]
    public void Step_counts_outside_1_to_the_training_steps_are_refused()
    {
        using var scope = torch.NewDisposeScope();
        var schedule = new NoiseSchedule(numTrainTimesteps: 10, betaSchedule: "linear", betaStart: 0.1, betaEnd: 0.5, stepsOffset: 0);
        var sampler = new EulerSampler();
        Denoiser model = (x, t) => x * 0.1;
        foreach (int steps in new[] { 0, 11 })
        {
            var e = Assert.Throws<SdLoraException>(() => sampler.Sample(model, torch.ones(2), schedule, steps));
            Assert.Equal($"steps {steps} is out of range for Euler: use 1 to 10", e.Message);
        }
        foreach (int steps in new[] { 1, 10 })
            Assert.Equal(2, sampler.Sample(model, torch.ones(2), schedule, steps).numel());
    }

    [Fact]
    public void Stochastic_samplers_without_a_noise_source_use_seed_0()
    {
        using var scope = torch.NewDisposeScope();
        var schedule = SchedulerGoldenTests.Sd15Schedule();
        var initial = torch.randn(1, 4, 4, 4, generator: new torch.Generator(5));
        foreach (var name in new[] { "euler_a", "ddpm" })
        {
            using var seed0 = new SeededNoise(0);
            using var seed1 = new SeededNoise(1);
            var withoutSource = SamplerCatalog.Get(name).Sample((x, t) => x * 0.1, initial, schedule, 5);
            Fixtures.AssertClose(SamplerCatalog.Get(name).Sample((x, t) => x * 0.1, initial, schedule, 5, seed0), withoutSource, Tolerance.Exact, $"{name}: default noise vs seed 0");
            Assert.False(torch.equal(withoutSource, SamplerCatalog.Get(name).Sample((x, t) => x * 0.1, initial, schedule, 5, seed1)).all().item<bool>());
        }
    }

    [Theory]
    [InlineData("euler_a", true)]
    [InlineData("ddpm", true)]
    [InlineData("euler", false)]
    [InlineData("ddim", false)]
    [InlineData("dpmpp_2m", false)]
    [InlineData("dpmpp_2m_karras", false)]
    [InlineData("lms", false)]
    [InlineData("plms", false)]
    [InlineData("heun", false)]
    public void Only_ancestral_samplers_draw_noise(string name, bool stochastic)
    {
        using var scope = torch.NewDisposeScope();
        var sampler = SamplerCatalog.Get(name);
        Assert.Equal(stochastic, sampler.IsStochastic);
        var noise = new FixedNoise(torch.zeros([40, 1, 4, 2, 2]));
        sampler.Sample((x, t) => x * 0.1, torch.randn(1, 4, 2, 2), SchedulerGoldenTests.Sd15Schedule(), 10, noise);
        Assert.Equal(stochastic, noise.Used > 0);
    }

    [Fact]
    public void Ddim_eta_decides_whether_it_draws_noise_and_negative_eta_is_refused()
    {
        Assert.False(new DdimSampler().IsStochastic);
        Assert.False(new DdimSampler(0).IsStochastic);
        Assert.True(new DdimSampler(0.3).IsStochastic);
        var e = Assert.Throws<SdLoraException>(() => new DdimSampler(-0.5));
        Assert.Equal("DDIM eta -0.5 is negative: use 0 (deterministic) to 1", e.Message);
    }

    [Fact]
    public void Ddim_step_with_eta_and_no_noise_is_the_mean_of_eq_12()
    {
        // Song et al. eq. 12/16: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z, s^2 = (1-a_prev)/(1-a) (1 - a/a_prev)
        using var scope = torch.NewDisposeScope();
        double[] x0 = [0.4, -1.1], eps = [1.5, 0.2];
        const double a = 0.3, aPrev = 0.6, eta = 0.8;
        double s2 = eta * eta * (1 - aPrev) / (1 - a) * (1 - a / aPrev);
        var expected = x0.Zip(eps, (x, e) => Math.Sqrt(aPrev) * x + Math.Sqrt(1 - aPrev - s2) * e).ToArray();
        var actual = DdimSampler.Step(torch.tensor(x0), torch.tensor(eps), a, aPrev, eta, noise: null);
        Fixtures.AssertClose(torch.tensor(expected), actual, Tolerance.RelativeToMax(1e-12), "DDIM mean with eta 0.8");
        double[] z = [1, -2];
        var withNoise = DdimSampler.Step(torch.tensor(x0), torch.tensor(eps), a, aPrev, eta, torch.tensor(z));
        Fixtures.AssertClose(torch.tensor(expected.Zip(z, (m, n) => m + Math.Sqrt(s2) * n).ToArray()), withNoise, Tolerance.RelativeToMax(1e-12), "DDIM with noise");
    }

    [Fact]
    public void Seeded_noise_repeats_for_the_same_seed()
    {
        using var scope = torch.NewDisposeScope();
        using var a = new SeededNoise(42);
        using var b = new SeededNoise(42);
        using var c = new SeededNoise(43);
        var first = a.Next([2, 4, 4], ScalarType.Float32, CPU);
        Fixtures.AssertClose(first, b.Next([2, 4, 4], ScalarType.Float32, CPU), 0, "same seed");
        Assert.False(torch.equal(first, c.Next([2, 4, 4], ScalarType.Float32, CPU)).all().item<bool>());
        Assert.Equal(ScalarType.BFloat16, a.Next([2], ScalarType.BFloat16, CPU).dtype);
    }

    [Fact]
    public void Fixed_noise_hands_out_its_draws_in_order()
    {
        using var scope = torch.NewDisposeScope();
        var draws = torch.arange(6, dtype: ScalarType.Float32).reshape(3, 2);
        var noise = new FixedNoise(draws);
        Assert.Equal(0f, noise.Next([2], ScalarType.Float32, CPU)[0].item<float>());
        Assert.Equal(2f, noise.Next([2], ScalarType.Float32, CPU)[0].item<float>());
        Assert.Equal(2, noise.Used);
    }
    [Fact]
    public void Fixed_noise_refuses_to_run_out_or_change_shape()
    {
        using var scope = torch.NewDisposeScope();
        var noise = new FixedNoise(torch.zeros(2, 3));
        noise.Next([3], ScalarType.Float32, CPU);
        Assert.Equal("FixedNoise: draw 1 is [3], asked for [4]", Assert.Throws<InvalidOperationException>(() => noise.Next([4], ScalarType.Float32, CPU)).Message);
        noise = new FixedNoise(torch.zeros(2, 3));
        noise.Next([3], ScalarType.Float32, CPU);
        noise.Next([3], ScalarType.Float32, CPU);
        var e = Assert.Throws<InvalidOperationException>(() => noise.Next([3], ScalarType.Float32, CPU));
        Assert.Equal("FixedNoise: all 2 draws used", e.Message);
    }
}
