using SdLora.Lora;
using SdLora.Pipelines;
using Xunit;

namespace SdLora.Tests.Pipelines;

/// <summary>
/// A one-shot generation (the CLI's) frees the text encoder once its prompts are encoded: the same pictures, with and
/// without a LoRA that adapts the text encoder, and a clear refusal if the model is asked to encode again.
/// </summary>
public class TextEncoderReleaseTests
{
    private static Txt2ImgOptions Small => new() { Prompt = "a dog", Width = 64, Height = 64, Steps = 2, Sampler = "Euler", Seed = 5 };

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Releasing_the_text_encoder_after_encoding_changes_no_pixel_and_refuses_a_second_generation(bool withLora)
    {
        var options = Small with { Loras = withLora ? [new LoraUse(Fixtures.CopiedSet("lora_kohya_tiny.safetensors"))] : [] };
        byte[] kept;
        using (var model = StableDiffusionModel.Load(Fixtures.CopiedTinyModel))
            kept = new Txt2ImgPipeline(model).Generate(options).Images[0].Image.Pixels;

        using var released = StableDiffusionModel.Load(Fixtures.CopiedTinyModel);
        long before = released.TextEncoder.parameters().Sum(p => p.NumberOfElements * p.ElementSize);
        var pipeline = new Txt2ImgPipeline(released);
        Assert.Equal(kept, pipeline.Generate(options with { ReleaseTextEncoderAfterEncoding = true }).Images[0].Image.Pixels);
        Assert.True(released.TextEncoderReleased);
        Assert.True(before > 0);
        Assert.All(released.TextEncoder.parameters(), p => Assert.Equal(TorchSharp.DeviceType.META, p.device_type));

        var e = Assert.Throws<SdLoraException>(() => pipeline.Generate(options));
        Assert.Contains("text encoder was released", e.Message);
        Assert.Contains("load the model again", e.Message);
    }
}
