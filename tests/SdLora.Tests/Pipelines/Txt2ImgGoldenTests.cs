using SdLora.Imaging;
using SdLora.Pipelines;
using SdLora.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Pipelines;

/// <summary>The tiny reference model, loaded once per test class from its diffusers folder and from its LDM single file.</summary>
public sealed class TinyModels : IDisposable
{
    public StableDiffusionModel Diffusers { get; } = StableDiffusionModel.Load(Fixtures.Golden("tiny-sd15"));
    public StableDiffusionModel Ldm { get; } = StableDiffusionModel.Load(Fixtures.Golden("tiny-sd15-ldm.safetensors"));
    public StableDiffusionModel Get(string layout) => layout == "ldm" ? Ldm : Diffusers;
    public void Dispose() { Diffusers.Dispose(); Ldm.Dispose(); }
}

public class Txt2ImgGoldenTests(TinyModels models) : IClassFixture<TinyModels>
{
    [Theory]
    [InlineData("diffusers", "ddim", "DDIM")]
    [InlineData("diffusers", "euler", "Euler")]
    [InlineData("ldm", "ddim", "DDIM")]
    [InlineData("ldm", "euler", "Euler")]
    public void Txt2img_matches_reference_latents_and_image(string layout, string run, string sampler)
    {
        var model = models.Get(layout);
        using var g = Fixtures.Open("txt2img");
        using var scope = torch.NewDisposeScope();
        var pipeline = new Txt2ImgPipeline(model);
        using var tmp = Fixtures.TempDir();
        var options = new Txt2ImgOptions
        {
            Prompt = "a photo of sks dog in a bucket", NegativePrompt = "blurry, low quality", Width = 128, Height = 128,
            Steps = 4, Sampler = sampler, CfgScale = 7.5, Seed = 3, InitialLatents = g.Load("initial_latents"), OutputDir = tmp.Path,
        };
        var result = pipeline.Generate(options);
        var image = Assert.Single(result.Images);

        // uint8 image: each pixel within +-1 and at most 0.5 % of the values different.
        var expected = g.Load("ddim.image_uint8".Replace("ddim", run)).to(ScalarType.Int32);
        var actual = torch.tensor(image.Image.Pixels, [128, 128, 3], ScalarType.Byte).to(ScalarType.Int32);
        var diff = (actual - expected).abs();
        Assert.True(diff.max().item<int>() <= 1, $"max pixel difference {diff.max().item<int>()}");
        double fraction = (diff > 0).sum().item<long>() / (double)diff.NumberOfElements;
        Assert.True(fraction <= 0.005, $"{fraction:P3} of the values differ");

        // The PNG on disk holds the same pixels and the A1111 parameters.
        Assert.NotNull(image.Path);
        Assert.Equal(image.Image.Pixels, RgbImage.Load(image.Path!).Pixels);
        var p = GenerationParameters.Parse(PngFile.ReadText(image.Path!)["parameters"]);
        Assert.Equal(sampler, p.Sampler);
        Assert.Equal(3, p.Seed);
        Assert.Equal("blurry, low quality", p.NegativePrompt);
    }

    [Theory]
    [InlineData("ddim", "DDIM")]
    [InlineData("euler", "Euler")]
    public void Sampling_loop_matches_reference_latents_after_every_step(string run, string sampler)
    {
        var model = models.Diffusers;
        using var g = Fixtures.Open("txt2img");
        using var scope = torch.NewDisposeScope();
        var pipeline = new Txt2ImgPipeline(model);
        var encoder = new SdLora.Text.PromptEncoder(model.Tokenizer, model.TextEncoder);
        using var cond = encoder.Encode("a photo of sks dog in a bucket");
        using var uncond = encoder.Encode("blurry, low quality");
        Fixtures.AssertClose(g.Load("prompt_embeds"), cond.Conditioning, 1e-4, "prompt_embeds");
        Fixtures.AssertClose(g.Load("negative_prompt_embeds"), uncond.Conditioning, 1e-4, "negative_prompt_embeds");

        var steps = new List<Tensor>();
        var latents = pipeline.Sample(SamplerCatalog.Get(sampler), g.Load("initial_latents"), cond.Conditioning, uncond.Conditioning, 7.5, 4,
            onStep: s => steps.Add(s.Sample.clone().DetachFromDisposeScope()));
        var expected = g.Load(run + ".latents");
        Assert.Equal(4, steps.Count);
        for (int i = 0; i < 4; i++) Fixtures.AssertClose(expected[i], steps[i], 1e-3, $"{run} latents after step {i}");
        Fixtures.AssertClose(g.Load(run + ".image"), pipeline.Decode(latents), 1e-3, $"{run} image");
    }

    [Fact]
    public void Bad_generation_options_give_one_line_errors()
    {
        var pipeline = new Txt2ImgPipeline(models.Diffusers);
        var e1 = Assert.Throws<SdLoraException>(() => pipeline.Generate(new Txt2ImgOptions { Prompt = "x", Width = 100, Height = 128 }));
        Assert.Contains("multiples of 8", e1.Message);
        var e2 = Assert.Throws<SdLoraException>(() => pipeline.Generate(new Txt2ImgOptions { Prompt = "x", Sampler = "warp drive" }));
        Assert.Contains("unknown sampler 'warp drive'", e2.Message);
        var e3 = Assert.Throws<SdLoraException>(() => pipeline.Generate(new Txt2ImgOptions { Prompt = "x <lora:missing_one:0.8>", Width = 64, Height = 64, LoraDir = "/nonexistent" }));
        Assert.Contains("missing_one", e3.Message);
    }
}
