using System.Text.Json;
using SdLora.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Sampling;

/// <summary>Every sampler against diffusers 0.25.1 on the fake model of golden README section 5.</summary>
[Trait("Category", "Golden")]
public sealed class SchedulerGoldenTests
{
    // Golden README: scheduler tables 1e-6, sample sequences 1e-5 (unless the fixture's JSON says otherwise).
    private static Tolerance TableTol(string fixture, string tensor) => Fixtures.GoldenTolerance(fixture, tensor, 1e-6);
    private static Tolerance SequenceTol(string tensor) => Fixtures.GoldenTolerance("schedulers", tensor, 1e-5);

    /// <summary>The SD1.5 schedule of the copied set's scheduler config (test data for behaviour tests).</summary>
    internal static NoiseSchedule Sd15Schedule() =>
        NoiseSchedule.FromSchedulerConfigJson(File.ReadAllText(Fixtures.CopiedSet("tiny-sd15/scheduler/scheduler_config.json")));

    /// <summary>The schedule of the golden set's scheduler config.</summary>
    private static NoiseSchedule GoldenSchedule() =>
        NoiseSchedule.FromSchedulerConfigJson(File.ReadAllText(Fixtures.Golden("tiny-sd15/scheduler/scheduler_config.json")));

    /// <summary>model_output = 0.1 * model_input + 0.01 * float(t) / 1000</summary>
    internal static Tensor FakeModel(Tensor input, Tensor t) => input * 0.1 + 0.01 * t.item<float>() / 1000;

    internal static ISampler SamplerFor(string variant) => variant switch
    {
        "euler_ancestral" => SamplerCatalog.Get("Euler a"),
        "pndm" => SamplerCatalog.Get("pndm"),
        _ => SamplerCatalog.Get(variant),
    };

    private static Tensor Stack(IEnumerable<Tensor> steps) => torch.stack(steps.ToArray());

    [SkippableTheory]
    [InlineData("ddim")]
    [InlineData("euler")]
    [InlineData("euler_ancestral")]
    [InlineData("dpmpp_2m")]
    [InlineData("dpmpp_2m_karras")]
    [InlineData("pndm")]
    [InlineData("lms")]
    [InlineData("ddpm")]
    public void Sampler_matches_reference_sample_sequence(string variant)
    {
        using var scope = torch.NewDisposeScope();
        using var json = Fixtures.Json("schedulers");
        using var file = Fixtures.Open("schedulers");
        if (!json.RootElement.GetProperty("variants").TryGetProperty(variant, out var info))
            throw new SkipException($"variant {variant} not in {Fixtures.Golden("schedulers.json")}");
        var schedule = GoldenSchedule();
        var sampler = SamplerFor(variant);
        int steps = info.GetProperty("num_inference_steps").GetInt32();

        var plan = sampler.Plan(schedule, steps);
        Fixtures.AssertClose(file.Load($"{variant}.timesteps"), torch.tensor(plan.Timesteps.Select(t => (float)t).ToArray()), TableTol("schedulers", $"{variant}.timesteps"), $"{variant}.timesteps");
        if (file.Contains($"{variant}.sigmas"))
            Fixtures.AssertClose(file.Load($"{variant}.sigmas"), torch.tensor(plan.Sigmas!.Select(s => (float)s).ToArray()), TableTol("schedulers", $"{variant}.sigmas"), $"{variant}.sigmas");
        Fixtures.AssertClose(info.GetProperty("init_noise_sigma").GetDouble(), plan.InitNoiseSigma, TableTol("schedulers", "init_noise_sigma"), $"{variant} init_noise_sigma");
        Assert.Equal(info.GetProperty("n_model_calls").GetInt32(), plan.ModelCalls);

        FixedNoise? noise = info.GetProperty("noise_used").GetBoolean() ? new FixedNoise(file.Load($"{variant}.noise")) : null;
        var inputs = new List<Tensor>();
        var samples = new List<Tensor>();
        var predictions = new List<Tensor>();
        var initial = file.Load("initial_noise");
        samples.Add(initial * plan.InitNoiseSigma);
        var result = sampler.Sample(FakeModel, initial, schedule, steps, noise, onStep: s =>
        {
            inputs.Add(s.ModelInput.clone().MoveToOuterDisposeScope());
            samples.Add(s.Sample.clone().MoveToOuterDisposeScope());
            if (s.PredOriginalSample is not null) predictions.Add(s.PredOriginalSample.clone().MoveToOuterDisposeScope());
        });

        foreach (var (name, actual) in new[] { ("model_inputs", inputs), ("samples", samples), ("pred_original_samples", predictions) })
            if (file.Contains($"{variant}.{name}"))
                Fixtures.AssertClose(file.Load($"{variant}.{name}"), Stack(actual), SequenceTol($"{variant}.{name}"), $"{variant}.{name}");
        Fixtures.AssertClose(samples[^1], result, Tolerance.Exact, $"{variant} result is the last step's sample");
        if (noise is not null) Assert.Equal(info.GetProperty("noise_draws").GetInt32(), noise.Used);
    }

    [SkippableFact]
    public void Training_tables_match_reference()
    {
        using var scope = torch.NewDisposeScope();
        using var file = Fixtures.Open("schedulers");
        var schedule = GoldenSchedule();
        void Check(string tensor, Tensor actual) => Fixtures.AssertClose(file.Load(tensor), actual, TableTol("schedulers", tensor), tensor);
        Check("ddpm.betas", schedule.Betas);
        Check("ddpm.alphas_cumprod", schedule.AlphasCumprod);
        Check("ddpm.snr", schedule.Snr(torch.arange(schedule.NumTrainTimesteps)));
        var x0 = file.Load("train.x0");
        var noise = file.Load("train.noise");
        var t = file.Load("train.timesteps");
        Check("train.noisy", schedule.AddNoise(x0, noise, t));
        Check("train.velocity", schedule.Velocity(x0, noise, t));
    }

    [SkippableTheory]
    [InlineData("ddim")]
    [InlineData("euler")]
    public void Txt2img_plans_match_reference(string variant)
    {
        using var scope = torch.NewDisposeScope();
        using var json = Fixtures.Json("txt2img");
        using var file = Fixtures.Open("txt2img");
        if (!json.RootElement.GetProperty("schedulers").TryGetProperty(variant, out var info))
            throw new SkipException($"run {variant} not in {Fixtures.Golden("txt2img.json")}");
        var plan = SamplerCatalog.Get(variant).Plan(GoldenSchedule(), json.RootElement.GetProperty("num_inference_steps").GetInt32());
        Fixtures.AssertClose(file.Load($"{variant}.timesteps").to(ScalarType.Float32), torch.tensor(plan.Timesteps.Select(t => (float)t).ToArray()), TableTol("txt2img", $"{variant}.timesteps"), $"{variant}.timesteps");
        Fixtures.AssertClose(info.GetProperty("init_noise_sigma").GetDouble(), plan.InitNoiseSigma, TableTol("txt2img", "init_noise_sigma"), $"{variant} init_noise_sigma");
    }
}
