using System.Text.Json;
using SdLora.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Sampling;

/// <summary>Every sampler against diffusers 0.25.1 on the fake model of golden README section 5.</summary>
public sealed class SchedulerGoldenTests
{
    private const double TableTol = 1e-6, SequenceTol = 1e-5;

    internal static NoiseSchedule Sd15Schedule() =>
        NoiseSchedule.FromSchedulerConfigJson(File.ReadAllText(Fixtures.Golden("tiny-sd15/scheduler/scheduler_config.json")));

    /// <summary>model_output = 0.1 * model_input + 0.01 * float(t) / 1000</summary>
    internal static Tensor FakeModel(Tensor input, Tensor t) => input * 0.1 + 0.01 * t.item<float>() / 1000;

    internal static ISampler SamplerFor(string variant) => variant switch
    {
        "euler_ancestral" => SamplerCatalog.Get("Euler a"),
        "pndm" => SamplerCatalog.Get("pndm"),
        _ => SamplerCatalog.Get(variant),
    };

    // schedulers.json holds Python's non-standard -Infinity (DPM's lambda_min_clipped), which System.Text.Json rejects.
    private static JsonDocument SchedulersJson() =>
        JsonDocument.Parse(File.ReadAllText(Fixtures.Golden("schedulers.json")).Replace("-Infinity", "null"));

    private static Tensor Stack(IEnumerable<Tensor> steps) => torch.stack(steps.ToArray());

    [Theory]
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
        using var file = Fixtures.Open("schedulers");
        using var json = SchedulersJson();
        var info = json.RootElement.GetProperty("variants").GetProperty(variant);
        var schedule = Sd15Schedule();
        var sampler = SamplerFor(variant);

        var plan = sampler.Plan(schedule, 20);
        Fixtures.AssertClose(file.Load($"{variant}.timesteps"), torch.tensor(plan.Timesteps.Select(t => (float)t).ToArray()), TableTol, $"{variant}.timesteps");
        if (file.Contains($"{variant}.sigmas"))
            Fixtures.AssertClose(file.Load($"{variant}.sigmas"), torch.tensor(plan.Sigmas!.Select(s => (float)s).ToArray()), TableTol, $"{variant}.sigmas");
        Assert.Equal(info.GetProperty("init_noise_sigma").GetDouble(), plan.InitNoiseSigma, 1e-6 * plan.InitNoiseSigma);
        Assert.Equal(info.GetProperty("n_model_calls").GetInt32(), plan.ModelCalls);

        FixedNoise? noise = info.GetProperty("noise_used").GetBoolean() ? new FixedNoise(file.Load($"{variant}.noise")) : null;
        var inputs = new List<Tensor>();
        var samples = new List<Tensor>();
        var predictions = new List<Tensor>();
        var initial = file.Load("initial_noise");
        samples.Add(initial * plan.InitNoiseSigma);
        var result = sampler.Sample(FakeModel, initial, schedule, 20, noise, onStep: s =>
        {
            inputs.Add(s.ModelInput.clone().MoveToOuterDisposeScope());
            samples.Add(s.Sample.clone().MoveToOuterDisposeScope());
            if (s.PredOriginalSample is not null) predictions.Add(s.PredOriginalSample.clone().MoveToOuterDisposeScope());
        });

        Fixtures.AssertClose(file.Load($"{variant}.model_inputs"), Stack(inputs), SequenceTol, $"{variant}.model_inputs");
        Fixtures.AssertClose(file.Load($"{variant}.samples"), Stack(samples), SequenceTol, $"{variant}.samples");
        if (file.Contains($"{variant}.pred_original_samples"))
            Fixtures.AssertClose(file.Load($"{variant}.pred_original_samples"), Stack(predictions), SequenceTol, $"{variant}.pred_original_samples");
        Fixtures.AssertClose(samples[^1], result, 0, $"{variant} result");
        if (noise is not null) Assert.Equal(info.GetProperty("noise_draws").GetInt32(), noise.Used);
    }

    [Fact]
    public void Training_tables_match_reference()
    {
        using var scope = torch.NewDisposeScope();
        using var file = Fixtures.Open("schedulers");
        var schedule = Sd15Schedule();
        Fixtures.AssertClose(file.Load("ddpm.betas"), schedule.Betas, TableTol, "ddpm.betas");
        Fixtures.AssertClose(file.Load("ddpm.alphas_cumprod"), schedule.AlphasCumprod, TableTol, "ddpm.alphas_cumprod");
        Fixtures.AssertClose(file.Load("ddpm.snr"), schedule.Snr(torch.arange(1000)), TableTol, "ddpm.snr");
        var x0 = file.Load("train.x0");
        var noise = file.Load("train.noise");
        var t = file.Load("train.timesteps");
        Fixtures.AssertClose(file.Load("train.noisy"), schedule.AddNoise(x0, noise, t), TableTol, "train.noisy");
        Fixtures.AssertClose(file.Load("train.velocity"), schedule.Velocity(x0, noise, t), TableTol, "train.velocity");
    }

    [Theory]
    [InlineData("ddim", 1.0)]
    [InlineData("euler", 4.2364)]
    public void Txt2img_four_step_plans_match_reference(string variant, double initNoiseSigma)
    {
        using var scope = torch.NewDisposeScope();
        using var file = Fixtures.Open("txt2img");
        var plan = SamplerCatalog.Get(variant).Plan(Sd15Schedule(), 4);
        Fixtures.AssertClose(file.Load($"{variant}.timesteps").to(ScalarType.Float32), torch.tensor(plan.Timesteps.Select(t => (float)t).ToArray()), TableTol, $"{variant}.timesteps");
        Assert.Equal(initNoiseSigma, plan.InitNoiseSigma, 1e-4);
    }

    [Fact]
    public void Euler_init_noise_sigma_for_20_steps_is_11_0736()
    {
        Assert.Equal(11.0736, SamplerCatalog.Get("euler").Plan(Sd15Schedule(), 20).InitNoiseSigma, 1e-4);
    }
}
