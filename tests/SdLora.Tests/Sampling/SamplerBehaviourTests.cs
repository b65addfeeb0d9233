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

    [Fact]
    public void Progress_reports_every_model_call()
    {
        using var scope = torch.NewDisposeScope();
        var reports = new List<SamplingProgress>();
        SamplerCatalog.Get("plms").Sample((x, t) => x * 0.1, torch.randn(1, 4, 4, 4), SchedulerGoldenTests.Sd15Schedule(), 10,
            progress: new SyncProgress<SamplingProgress>(reports.Add));
        Assert.Equal(Enumerable.Range(1, 11), reports.Select(r => r.Step));
        Assert.All(reports, r => Assert.Equal(11, r.Total));
    }

    [Fact]
    public void Sampling_holds_no_tensors_beyond_the_result()
    {
        using var scope = torch.NewDisposeScope();
        var initial = torch.randn(1, 4, 8, 8);
        var schedule = SchedulerGoldenTests.Sd15Schedule();
        foreach (var name in AllShortNames)
        {
            int before = scope.DisposablesCount;
            var result = SamplerCatalog.Get(name).Sample((x, t) => x * 0.1, initial, schedule, 30, new SeededNoise(7));
            Assert.True(scope.DisposablesCount - before <= 2, $"{name}: {scope.DisposablesCount - before} tensors left in the caller's scope");
            result.Dispose();
        }
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
}
