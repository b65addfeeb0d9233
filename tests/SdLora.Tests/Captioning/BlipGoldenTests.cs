using System.Text.Json;
using SdLora.Captioning;
using SdLora.Imaging;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Captioning;

/// <summary>The tiny BLIP model, loaded once for every test in this folder.</summary>
public sealed class TinyBlip : IDisposable
{
    public static string ModelDir => Fixtures.Golden("blip/model");
    public BlipCaptioner Captioner { get; } = BlipCaptioner.Load(ModelDir);
    public BlipForConditionalGeneration Model => Captioner.Model;
    public void Dispose() => Captioner.Dispose();
}

public sealed class BlipGoldenTests(TinyBlip blip) : IClassFixture<TinyBlip>
{
    private static Tensor Golden(string file, string name)
    {
        using var f = Fixtures.Open("blip/" + file);
        return f.Load(name);
    }

    [Fact]
    public void Config_is_read_from_the_full_hub_form()
    {
        var c = blip.Model.Config;
        Assert.Equal(new BlipVisionConfig(40, 37, 2, 4, 32, 8, 1e-5), c.Vision);
        Assert.Equal(new BlipTextConfig(398, 32, 40, 37, 2, 4, 64, 1e-12, 396, 5, 0), c.Text);
    }

    [Fact]
    public void Config_short_form_takes_class_defaults()
    {
        using var doc = JsonDocument.Parse("""{"text_config":{"vocab_size":398},"vision_config":{"hidden_size":40}}""");
        var c = BlipConfig.FromJson(doc.RootElement);
        Assert.Equal(398, c.Text.VocabSize);
        Assert.Equal(768, c.Text.HiddenSize);
        Assert.Equal(40, c.Text.EncoderHiddenSize); // always the vision width
        Assert.Equal(8, c.Text.NumAttentionHeads);
        Assert.Equal(30522, c.Text.BosTokenId);
        Assert.Equal(102, c.Text.SepTokenId);
        Assert.Equal(384, c.Vision.ImageSize);
        Assert.Equal(12, c.Vision.NumAttentionHeads);
    }

    [Fact]
    public void Pil_bicubic_resize_matches_pillow_exactly()
    {
        using var f = Fixtures.Open("blip/preprocess");
        var src = f.Load("image_a_uint8");
        var expected = f.Load("image_a_resized_uint8");
        var image = new RgbImage(37, 23, src.bytes.ToArray());
        var resized = PilResize.Bicubic(image, 32, 32);
        Assert.Equal(expected.bytes.ToArray(), resized.Pixels);
    }

    [Theory]
    [InlineData("image_a.png", "pixel_values_a")]
    [InlineData("image_b.png", "pixel_values_b")]
    [InlineData("image_a.png", "pixel_values_a_torchvision")]
    [InlineData("image_b.png", "pixel_values_b_torchvision")]
    public void Preprocessing_matches_reference_pixel_values(string file, string tensor)
    {
        var image = RgbImage.Load(Fixtures.Golden("blip/" + file));
        using var actual = blip.Captioner.Processor.Preprocess([image]);
        using var expected = Golden("preprocess", tensor);
        Fixtures.AssertClose(expected, actual, 1e-6, tensor);
    }

    [Fact]
    public void Png_decoding_gives_the_reference_uint8_pixels()
    {
        using var expected = Golden("preprocess", "image_a_uint8");
        Assert.Equal(expected.bytes.ToArray(), RgbImage.Load(Fixtures.Golden("blip/image_a.png")).Pixels);
    }

    [Fact]
    public void Vision_encoder_matches_reference_hidden_states()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var f = Fixtures.Open("blip/vision");
        var hidden = new List<Tensor>();
        var last = blip.Model.vision_model.Forward(f.Load("pixel_values"), hidden);
        Fixtures.AssertClose(f.Load("last_hidden_state"), last, 1e-4, "last_hidden_state");
        for (int i = 0; i < 3; i++) Fixtures.AssertClose(f.Load($"hidden_states.{i}"), hidden[i], 1e-4, $"hidden_states.{i}");
        f.Dispose();
    }

    [Fact]
    public void Text_decoder_matches_reference_teacher_forced_logits()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var f = Fixtures.Open("blip/text_decoder");
        var hidden = new List<Tensor>();
        var logits = blip.Model.text_decoder.Forward(f.Load("input_ids"), f.Load("image_embeds"), f.Load("attention_mask"), null, hidden);
        Fixtures.AssertClose(f.Load("logits"), logits, 1e-4, "logits");
        for (int i = 0; i < 3; i++) Fixtures.AssertClose(f.Load($"hidden_states.{i}"), hidden[i], 1e-4, $"hidden_states.{i}");
        // End to end from pixels as well.
        Fixtures.AssertClose(f.Load("logits"), blip.Model.Logits(f.Load("pixel_values"), f.Load("input_ids"), f.Load("attention_mask")), 1e-4, "logits from pixels");
    }

    [Fact]
    public void Decoder_with_key_value_cache_equals_full_recompute()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var f = Fixtures.Open("blip/text_decoder");
        var ids = f.Load("input_ids")[..1];
        var image = f.Load("image_embeds")[..1];
        var full = blip.Model.text_decoder.Forward(ids, image);
        using var cache = new BlipDecoderCache(blip.Model.Config.Text.NumHiddenLayers);
        var first = blip.Model.text_decoder.Forward(ids[.., ..5], image, null, cache);
        var steps = new List<Tensor> { first };
        for (int t = 5; t < ids.shape[1]; t++) steps.Add(blip.Model.text_decoder.Forward(ids[.., t..(t + 1)], image, null, cache));
        Fixtures.AssertClose(full, torch.cat(steps, 1), 1e-5, "cached logits");
    }
}
