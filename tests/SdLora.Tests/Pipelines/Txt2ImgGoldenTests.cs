using SdLora.Imaging;
using SdLora.Pipelines;
using SdLora.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Pipelines;

/// <summary>
/// The golden set's tiny model, loaded once per test class from its diffusers folder and from its LDM single file; a
/// set without one of them skips the tests that use it.
/// </summary>
public sealed class TinyModels : IDisposable
{
    private readonly Func<StableDiffusionModel> _diffusers = Fixtures.LoadOrRememberSkip(() => StableDiffusionModel.Load(Fixtures.Golden("tiny-sd15")));
    private readonly Func<StableDiffusionModel> _ldm = Fixtures.LoadOrRememberSkip(() => StableDiffusionModel.Load(Fixtures.Golden("tiny-sd15-ldm.safetensors")));
    public StableDiffusionModel Diffusers => _diffusers();
    public StableDiffusionModel Ldm => _ldm();
    public StableDiffusionModel Get(string layout) => layout == "ldm" ? Ldm : Diffusers;

    public void Dispose()
    {
        foreach (var model in new[] { _diffusers, _ldm })
            try { model().Dispose(); } catch (SkipException) { }
    }
}

/// <summary>The copied set's tiny model (diffusers folder), for behaviour tests: loaded once per test class.</summary>
public sealed class CopiedTinyModel : IDisposable
{
    public StableDiffusionModel Model { get; } = StableDiffusionModel.Load(Fixtures.CopiedTinyModel);
    public void Dispose() => Model.Dispose();
}

[Trait("Category", "Golden")]
public class Txt2ImgGoldenTests(TinyModels models) : IClassFixture<TinyModels>
{
    /// <summary>The sampler catalog name of a diffusers scheduler class of the fixture.</summary>
    private static string SamplerFor(string schedulerClass) => schedulerClass switch
    {
        "DDIMScheduler" => "DDIM",
        "EulerDiscreteScheduler" => "Euler",
        "EulerAncestralDiscreteScheduler" => "Euler a",
        "DPMSolverMultistepScheduler" => "DPM++ 2M",
        "LMSDiscreteScheduler" => "LMS",
        "PNDMScheduler" => "PLMS",
        "DDPMScheduler" => "DDPM",
        var other => throw new SkipException($"scheduler class {other} of the txt2img fixture has no sampler here"),
    };

    private sealed record Run(string Name, string Sampler, string Prompt, string NegativePrompt, int Width, int Height, int Steps, double Cfg);

    private static Run ReadRun(System.Text.Json.JsonDocument json, string run)
    {
        var r = json.RootElement;
        if (!r.GetProperty("schedulers").TryGetProperty(run, out var scheduler))
            throw new SkipException($"run {run} not in {Fixtures.Golden("txt2img.json")}");
        return new Run(run, SamplerFor(scheduler.GetProperty("class").GetString()!), r.GetProperty("prompt").GetString()!,
            r.GetProperty("negative_prompt").GetString()!, r.GetProperty("width").GetInt32(), r.GetProperty("height").GetInt32(),
            r.GetProperty("num_inference_steps").GetInt32(), r.GetProperty("guidance_scale").GetDouble());
    }

    [SkippableTheory]
    [InlineData("diffusers", "ddim")]
    [InlineData("diffusers", "euler")]
    [InlineData("ldm", "ddim")]
    [InlineData("ldm", "euler")]
    public void Txt2img_matches_reference_latents_and_image(string layout, string run)
    {
        using var json = Fixtures.Json("txt2img");
        using var g = Fixtures.Open("txt2img");
        var r = ReadRun(json, run);
        var model = models.Get(layout);
        using var scope = torch.NewDisposeScope();
        var pipeline = new Txt2ImgPipeline(model);
        using var tmp = Fixtures.TempDir();
        // The fixture gives the initial latents, so the seed only labels the image (PNG name and parameters).
        const long seedLabel = 3;
        var options = new Txt2ImgOptions
        {
            Prompt = r.Prompt, NegativePrompt = r.NegativePrompt, Width = r.Width, Height = r.Height,
            Steps = r.Steps, Sampler = r.Sampler, CfgScale = r.Cfg, Seed = seedLabel, InitialLatents = g.Load("initial_latents"), OutputDir = tmp.Path,
        };
        var result = pipeline.Generate(options);
        var image = Assert.Single(result.Images);

        // uint8 image (golden README): each pixel within +-1 and at most 0.5 % of the values different.
        var expected = g.Load(run + ".image_uint8").to(ScalarType.Int32);
        Assert.Equal(new long[] { r.Height, r.Width, 3 }, expected.shape);
        var actual = torch.tensor(image.Image.Pixels, expected.shape, ScalarType.Byte).to(ScalarType.Int32);
        var diff = (actual - expected).abs();
        Assert.True(diff.max().item<int>() <= 1, $"{run}.image_uint8: max pixel difference {diff.max().item<int>()}");
        double fraction = (diff > 0).sum().item<long>() / (double)diff.NumberOfElements;
        Assert.True(fraction <= 0.005, $"{run}.image_uint8: {fraction:P3} of the values differ");

        // The PNG on disk holds the same pixels and the A1111 parameters.
        Assert.NotNull(image.Path);
        Assert.Equal(image.Image.Pixels, RgbImage.Load(image.Path!).Pixels);
        var p = GenerationParameters.Parse(PngFile.ReadText(image.Path!)["parameters"]);
        Assert.Equal(r.Sampler, p.Sampler);
        Assert.Equal(seedLabel, p.Seed);
        Assert.Equal(r.NegativePrompt, p.NegativePrompt);
    }

    [SkippableTheory]
    [InlineData("ddim")]
    [InlineData("euler")]
    public void Sampling_loop_matches_reference_latents_after_every_step(string run)
    {
        using var json = Fixtures.Json("txt2img");
        using var g = Fixtures.Open("txt2img");
        var r = ReadRun(json, run);
        var model = models.Diffusers;
        using var scope = torch.NewDisposeScope();
        var pipeline = new Txt2ImgPipeline(model);
        var encoder = new SdLora.Text.PromptEncoder(model.Tokenizer, model.TextEncoder);
        using var cond = encoder.Encode(r.Prompt);
        using var uncond = encoder.Encode(r.NegativePrompt);
        Fixtures.AssertClose(g.Load("prompt_embeds"), cond.Conditioning, Fixtures.GoldenTolerance("txt2img", "prompt_embeds", 1e-4), "prompt_embeds");
        Fixtures.AssertClose(g.Load("negative_prompt_embeds"), uncond.Conditioning, Fixtures.GoldenTolerance("txt2img", "negative_prompt_embeds", 1e-4), "negative_prompt_embeds");

        var steps = new List<Tensor>();
        var latents = pipeline.Sample(SamplerCatalog.Get(r.Sampler), g.Load("initial_latents"), cond.Conditioning, uncond.Conditioning, r.Cfg, r.Steps,
            onStep: s => steps.Add(s.Sample.clone().DetachFromDisposeScope()));
        var expected = g.Load(run + ".latents");
        Assert.Equal(expected.shape[0], steps.Count);
        var tol = Fixtures.GoldenTolerance("txt2img", run + ".latents", 1e-3);
        for (int i = 0; i < steps.Count; i++) Fixtures.AssertClose(expected[i], steps[i], tol, $"{run}.latents after step {i}");
        Fixtures.AssertClose(g.Load(run + ".image"), pipeline.Decode(latents), Fixtures.GoldenTolerance("txt2img", run + ".image", 1e-3), $"{run}.image");
    }
}

public class Txt2ImgPipelineTests(CopiedTinyModel tiny) : IClassFixture<CopiedTinyModel>
{
    [Fact]
    public void Bad_generation_options_give_one_line_errors()
    {
        var pipeline = new Txt2ImgPipeline(tiny.Model);
        var e1 = Assert.Throws<SdLoraException>(() => pipeline.Generate(new Txt2ImgOptions { Prompt = "x", Width = 100, Height = 128 }));
        Assert.Contains("multiples of 8", e1.Message);
        var e2 = Assert.Throws<SdLoraException>(() => pipeline.Generate(new Txt2ImgOptions { Prompt = "x", Sampler = "warp drive" }));
        Assert.Contains("unknown sampler 'warp drive'", e2.Message);
        var e3 = Assert.Throws<SdLoraException>(() => pipeline.Generate(new Txt2ImgOptions { Prompt = "x <lora:missing_one:0.8>", Width = 64, Height = 64, LoraDir = "/nonexistent" }));
        Assert.Contains("missing_one", e3.Message);
    }
}
