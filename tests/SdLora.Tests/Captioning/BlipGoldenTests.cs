using System.Text.Json;
using SdLora.Captioning;
using SdLora.Imaging;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Captioning;

/// <summary>The copied set's tiny BLIP model (test data for behaviour tests), loaded once per test class.</summary>
public sealed class TinyBlip : IDisposable
{
    public static string ModelDir => Fixtures.CopiedSet("blip/model");
    public BlipCaptioner Captioner { get; } = BlipCaptioner.Load(ModelDir);
    public BlipForConditionalGeneration Model => Captioner.Model;
    public void Dispose() => Captioner.Dispose();
}

/// <summary>The golden set's tiny BLIP model, loaded once per test class; a set without it skips the tests that use it.</summary>
public sealed class GoldenBlip : IDisposable
{
    private readonly Func<BlipCaptioner> _captioner = Fixtures.LoadOrRememberSkip(() => BlipCaptioner.Load(Fixtures.Golden("blip/model")));
    public BlipCaptioner Captioner => _captioner();
    public BlipForConditionalGeneration Model => Captioner.Model;
    public void Dispose() { try { _captioner().Dispose(); } catch (SkipException) { } }
}

[Trait("Category", "Golden")]
public sealed class BlipGoldenTests(GoldenBlip blip) : IClassFixture<GoldenBlip>
{
    private static Tolerance Tol(string file, string tensor, double readmeDefault) => Fixtures.GoldenTolerance("blip/" + file, tensor, readmeDefault);

    private static Tensor Golden(string file, string name)
    {
        using var f = Fixtures.Open("blip/" + file);
        return f.Load(name);
    }

    [SkippableFact]
    public void Config_is_read_from_the_full_hub_form()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Fixtures.Golden("blip/model/config.json")));
        var v = doc.RootElement.GetProperty("vision_config");
        var t = doc.RootElement.GetProperty("text_config");
        int I(JsonElement e, string key) => e.GetProperty(key).GetInt32();
        double D(JsonElement e, string key) => e.GetProperty(key).GetDouble();
        var c = blip.Model.Config;
        Assert.Equal(new BlipVisionConfig(I(v, "hidden_size"), I(v, "intermediate_size"), I(v, "num_hidden_layers"), I(v, "num_attention_heads"),
            I(v, "image_size"), I(v, "patch_size"), D(v, "layer_norm_eps")), c.Vision);
        // encoder_hidden_size is always the vision width (the reference overwrites it).
        Assert.Equal(new BlipTextConfig(I(t, "vocab_size"), I(t, "hidden_size"), I(v, "hidden_size"), I(t, "intermediate_size"), I(t, "num_hidden_layers"),
            I(t, "num_attention_heads"), I(t, "max_position_embeddings"), D(t, "layer_norm_eps"), I(t, "bos_token_id"), I(t, "sep_token_id"), I(t, "pad_token_id")), c.Text);
    }

    [SkippableFact]
    public void Pil_bicubic_resize_matches_pillow_exactly()
    {
        using var f = Fixtures.Open("blip/preprocess");
        var src = f.Load("image_a_uint8");
        var expected = f.Load("image_a_resized_uint8");
        var image = new RgbImage((int)src.shape[1], (int)src.shape[0], src.bytes.ToArray());
        var resized = PilResize.Bicubic(image, (int)expected.shape[1], (int)expected.shape[0]);
        Assert.Equal(expected.bytes.ToArray(), resized.Pixels);
    }

    [SkippableTheory]
    [InlineData("image_a.png", "pixel_values_a")]
    [InlineData("image_b.png", "pixel_values_b")]
    [InlineData("image_a.png", "pixel_values_a_torchvision")]
    [InlineData("image_b.png", "pixel_values_b_torchvision")]
    public void Preprocessing_matches_reference_pixel_values(string file, string tensor)
    {
        var image = RgbImage.Load(Fixtures.Golden("blip/" + file));
        using var actual = blip.Captioner.Processor.Preprocess([image]);
        using var expected = Golden("preprocess", tensor);
        Fixtures.AssertClose(expected, actual, Tol("preprocess", tensor, 1e-6), tensor);
    }

    [SkippableFact]
    public void Png_decoding_gives_the_reference_uint8_pixels()
    {
        using var expected = Golden("preprocess", "image_a_uint8");
        Assert.Equal(expected.bytes.ToArray(), RgbImage.Load(Fixtures.Golden("blip/image_a.png")).Pixels);
    }

    /// <summary>Every <c>hidden_states.N</c> tensor of a fixture, in order.</summary>
    private static string[] HiddenStateNames(SdLora.IO.SafetensorsFile f) =>
        f.Keys.Where(k => k.StartsWith("hidden_states.")).OrderBy(k => int.Parse(k["hidden_states.".Length..])).ToArray();

    [SkippableFact]
    public void Vision_encoder_matches_reference_hidden_states()
    {
        using var f = Fixtures.Open("blip/vision");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var hidden = new List<Tensor>();
        var last = blip.Model.vision_model.Forward(f.Load("pixel_values"), hidden);
        Fixtures.AssertClose(f.Load("last_hidden_state"), last, Tol("vision", "last_hidden_state", 1e-4), "last_hidden_state");
        var names = HiddenStateNames(f);
        Assert.Equal(names.Length, hidden.Count);
        for (int i = 0; i < names.Length; i++) Fixtures.AssertClose(f.Load(names[i]), hidden[i], Tol("vision", names[i], 1e-4), names[i]);
    }

    [SkippableFact]
    public void Text_decoder_matches_reference_teacher_forced_logits()
    {
        using var f = Fixtures.Open("blip/text_decoder");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var hidden = new List<Tensor>();
        var logits = blip.Model.text_decoder.Forward(f.Load("input_ids"), f.Load("image_embeds"), f.Load("attention_mask"), null, hidden);
        var tol = Tol("text_decoder", "logits", 1e-4);
        Fixtures.AssertClose(f.Load("logits"), logits, tol, "logits");
        var names = HiddenStateNames(f);
        Assert.Equal(names.Length, hidden.Count);
        for (int i = 0; i < names.Length; i++) Fixtures.AssertClose(f.Load(names[i]), hidden[i], Tol("text_decoder", names[i], 1e-4), names[i]);
        // End to end from pixels as well.
        Fixtures.AssertClose(f.Load("logits"), blip.Model.Logits(f.Load("pixel_values"), f.Load("input_ids"), f.Load("attention_mask")), tol, "logits from pixels");
    }

    [SkippableFact]
    public void Decoder_with_key_value_cache_equals_full_recompute()
    {
        using var f = Fixtures.Open("blip/text_decoder");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = f.Load("input_ids")[..1];
        var image = f.Load("image_embeds")[..1];
        var full = blip.Model.text_decoder.Forward(ids, image);
        using var cache = new BlipDecoderCache(blip.Model.Config.Text.NumHiddenLayers);
        // A prompt of half the sequence at once, then one token at a time.
        long prompt = Math.Max(1, ids.shape[1] / 2);
        var first = blip.Model.text_decoder.Forward(ids[.., ..(int)prompt], image, null, cache);
        var steps = new List<Tensor> { first };
        for (long t = prompt; t < ids.shape[1]; t++) steps.Add(blip.Model.text_decoder.Forward(ids[.., (int)t..(int)(t + 1)], image, null, cache));
        // The same logits through attention over a cached prefix: fp32 rounding only (golden rule, 1e-5).
        Fixtures.AssertClose(full, torch.cat(steps, 1), Tolerance.Golden(1e-5), "cached logits");
    }
}

public sealed class BlipConfigTests
{
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
}
