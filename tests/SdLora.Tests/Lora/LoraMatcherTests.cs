using SdLora.IO;
using SdLora.Lora;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>
/// How a LoRA file's modules find their layers (every name form, LDM names, leftovers) and every shape refusal, on a
/// hand-made index of a few layers so each rule is seen on its own.
/// </summary>
public class LoraMatcherTests
{
    private const string Attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    private const string Conv = "down_blocks.0.resnets.0.conv1";
    private const string ProjIn = "down_blocks.0.attentions.0.proj_in";
    private const string TeQ = "text_model.encoder.layers.0.self_attn.q_proj";

    private static LoraTargetIndex Index() => LoraTargetIndex.FromParameters(
    [
        ("unet." + Attn + ".weight", [8, 6]),
        ("unet." + Conv + ".weight", [8, 4, 3, 3]),
        ("unet." + ProjIn + ".weight", [8, 8, 1, 1]),
        ("unet." + ProjIn + ".bias", [8]),
        ("text_encoder." + TeQ + ".weight", [6, 6]),
    ]);

    private static Dictionary<string, Tensor> Pair(string stem, long[] down, long[] up, string downSuffix = ".lora_down.weight", string upSuffix = ".lora_up.weight") =>
        new() { [stem + downSuffix] = torch.randn(down), [stem + upSuffix] = torch.randn(up) };

    private static LoraFile Write(TempDir dir, string name, params Dictionary<string, Tensor>[] parts)
    {
        var all = parts.SelectMany(p => p).ToDictionary(kv => kv.Key, kv => kv.Value);
        return LoraFile.Read(dir.SaveSafetensors(name, all));
    }

    [Fact]
    public void Every_name_form_finds_its_layer()
    {
        using var dir = Fixtures.TempDir();
        using var lora = Write(dir, "forms.safetensors",
            Pair("lora_unet_" + Attn.Replace('.', '_'), [2, 6], [8, 2]),        // kohya
            Pair("unet." + Conv, [2, 4, 3, 3], [8, 2, 1, 1], ".lora_A.weight", ".lora_B.weight"), // PEFT, prefixed
            Pair(ProjIn, [2, 8], [8, 2], ".lora.down.weight", ".lora.up.weight"), // unet-relative path
            Pair(TeQ, [2, 6], [6, 2], ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight")); // text-encoder-relative

        var match = LoraMatcher.Match(lora, Index());

        Assert.Equal(4, match.Matched.Count);
        Assert.Empty(match.UnmatchedKeys);
        Assert.Null(match.Warning);
        Assert.False(match.UsedLdmNames);
        var byTarget = match.Matched.ToDictionary(m => m.Target.PrefixedPath, m => m.Weights.DownKey);
        Assert.Equal("lora_unet_" + Attn.Replace('.', '_') + ".lora_down.weight", byTarget["unet." + Attn]);
        Assert.Equal("unet." + Conv + ".lora_A.weight", byTarget["unet." + Conv]);
        Assert.Equal(ProjIn + ".lora.down.weight", byTarget["unet." + ProjIn]);
        Assert.Equal(TeQ + ".lora_linear_layer.down.weight", byTarget["text_encoder." + TeQ]);
    }

    [Fact]
    public void Kohya_names_with_LDM_paths_go_through_the_key_map_and_say_so()
    {
        using var dir = Fixtures.TempDir();
        // input_blocks.1.1.proj_in is down_blocks.0.attentions.0.proj_in in SD1.x.
        using var lora = Write(dir, "ldm.safetensors", Pair("lora_unet_input_blocks_1_1_proj_in", [2, 8, 1, 1], [8, 2, 1, 1]));

        var match = LoraMatcher.Match(lora, Index());

        Assert.True(match.UsedLdmNames);
        Assert.Equal("unet." + ProjIn, Assert.Single(match.Matched).Target.PrefixedPath);

        var refused = Assert.Throws<SdLoraException>(() => LoraMatcher.Match(lora, Index(), _ => null));
        Assert.Contains("none of its 1 LoRA modules matches a layer of the model (first key: 'lora_unet_input_blocks_1_1_proj_in.lora_down.weight')", refused.Message);
    }

    [Fact]
    public void Leftover_keys_are_listed_in_the_warning_and_a_file_that_matches_nothing_is_refused()
    {
        using var dir = Fixtures.TempDir();
        using var lora = Write(dir, "extra.safetensors",
            Pair("lora_unet_" + Attn.Replace('.', '_'), [2, 6], [8, 2]),
            Pair("lora_unet_mid_block_attentions_0_proj_out", [2, 8], [8, 2]),
            Pair("lora_te_text_model_encoder_layers_5_mlp_fc1", [2, 6], [6, 2]),
            Pair("lora_unet_up_blocks_1_attentions_0_proj_out", [2, 8], [8, 2]),
            new() { ["lora_unet_" + Attn.Replace('.', '_') + ".hada_w1_a"] = torch.randn(2, 2) });

        var match = LoraMatcher.Match(lora, Index());

        Assert.Single(match.Matched);
        Assert.Equal(4, match.UnmatchedKeys.Count);
        Assert.Contains("lora_unet_" + Attn.Replace('.', '_') + ".hada_w1_a", match.UnmatchedKeys); // unknown keys are leftovers too
        Assert.Equal($"{lora.Path}: 4 LoRA keys match no layer of the model and are ignored (first: {string.Join(", ", match.UnmatchedKeys.Take(3))})", match.Warning);

        using var none = Write(dir, "none.safetensors", Pair("lora_unet_mid_block_attentions_0_proj_out", [2, 8], [8, 2]));
        var e = Assert.Throws<SdLoraException>(() => LoraMatcher.Match(none, Index()));
        Assert.Equal($"{none.Path}: none of its 1 LoRA modules matches a layer of the model (first key: 'lora_unet_mid_block_attentions_0_proj_out.lora_down.weight'). Is it a LoRA for another model family?", e.Message);
    }

    [Theory]
    [InlineData("outputs", Attn, new long[] { 2, 6 }, new long[] { 9, 2 }, "lora_up has 9 outputs, the layer 8")]
    [InlineData("inputs", Attn, new long[] { 2, 7 }, new long[] { 8, 2 }, "lora_down has 7 inputs, the layer 6")]
    [InlineData("conv for linear", Attn, new long[] { 2, 6, 3, 3 }, new long[] { 8, 2, 1, 1 }, "a conv LoRA for a linear layer")]
    [InlineData("conv 1x3 for linear", Attn, new long[] { 2, 6, 1, 3 }, new long[] { 8, 2, 1, 1 }, "a conv LoRA for a linear layer")]
    [InlineData("kernel 3x1", Conv, new long[] { 2, 4, 3, 1 }, new long[] { 8, 2, 1, 1 }, "kernel 3x1, the layer's 3x3")]
    [InlineData("kernel", Conv, new long[] { 2, 4, 1, 1 }, new long[] { 8, 2, 1, 1 }, "kernel 1x1, the layer's 3x3")]
    [InlineData("linear for 3x3", Conv, new long[] { 2, 4 }, new long[] { 8, 2 }, "a linear LoRA for a conv layer with a kernel larger than 1x1")]
    public void A_module_that_does_not_fit_its_layer_is_refused_with_the_reason(string name, string layer, long[] down, long[] up, string reason)
    {
        using var dir = Fixtures.TempDir();
        var stem = "lora_unet_" + layer.Replace('.', '_');
        using var lora = Write(dir, name.Replace(' ', '-') + ".safetensors", Pair(stem, down, up));
        var weight = layer == Attn ? "8,6" : "8,4,3,3";

        var e = Assert.Throws<SdLoraException>(() => LoraMatcher.Match(lora, Index()));

        Assert.Equal($"{lora.Path}: '{stem}.lora_down.weight' does not fit layer 'unet.{layer}' (weight [{weight}]): {reason}; the LoRA was made for a different model (SD2/SDXL or another architecture)", e.Message);
    }

    [Fact]
    public void A_linear_LoRA_fits_a_1x1_conv_and_a_1x1_conv_LoRA_fits_a_linear_layer()
    {
        using var dir = Fixtures.TempDir();
        using var lora = Write(dir, "mixed.safetensors",
            Pair("lora_unet_" + ProjIn.Replace('.', '_'), [2, 8], [8, 2]),               // SD1 proj_in is a 1x1 conv; SD2-style linear LoRAs fit
            Pair("lora_unet_" + Attn.Replace('.', '_'), [2, 6, 1, 1], [8, 2, 1, 1]));     // and the other way round

        var match = LoraMatcher.Match(lora, Index());

        Assert.Equal(2, match.Matched.Count);
    }
}
