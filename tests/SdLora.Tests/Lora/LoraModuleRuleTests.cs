using SdLora.Lora;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>The smaller rules of one LoRA module: alpha defaults, merge state, dropout, initial bounds, refusals.</summary>
public class LoraModuleRuleTests
{
    private static (AdaptableLinear Layer, LoraLinear Lora) Linear(int rank = 2, double? alpha = null, int inF = 6, int outF = 4)
    {
        var layer = new AdaptableLinear(inF, outF);
        var lora = new LoraLinear("lora_unet_x", LoraPart.Unet, layer, rank, alpha);
        return (layer, lora);
    }

    [Theory]
    [InlineData(null, 4.0)]
    [InlineData(0.0, 4.0)]
    [InlineData(double.NaN, 4.0)]
    [InlineData(2.0, 2.0)]
    [InlineData(-1.0, -1.0)]
    public void Missing_zero_or_NaN_alpha_means_alpha_equals_rank(double? alpha, double expected)
    {
        var (_, lora) = Linear(rank: 4, alpha: alpha);
        Assert.Equal(expected, lora.Alpha);
        Assert.Equal(expected / 4, lora.Scale);
    }

    [Fact]
    public void Rank_must_be_positive_and_weights_must_fit()
    {
        var layer = new AdaptableLinear(6, 4);
        Assert.Throws<ArgumentOutOfRangeException>(() => new LoraLinear("lora_unet_x", LoraPart.Unet, layer, 0, null));
        var (_, lora) = Linear();
        var e = Assert.Throws<ArgumentException>(() => lora.SetWeights(torch.zeros(2, 5), torch.zeros(4, 2)));
        Assert.Equal("lora_unet_x: expected down [2,6] and up [4,2], got [2,5] and [4,2]", e.Message);
        Assert.Throws<ArgumentException>(() => lora.SetWeights(torch.zeros(2, 6), torch.zeros(4, 3)));
    }

    [Fact]
    public void Merged_weights_keep_their_multiplier_and_unmerge_brings_the_adapter_back_only_if_it_was_attached()
    {
        var (layer, lora) = Linear();
        lora.SetWeights(torch.randn(2, 6), torch.randn(4, 2));
        lora.Attach();
        lora.Merge();
        Assert.True(lora.IsMerged);
        Assert.False(lora.IsAttached);
        var e = Assert.Throws<InvalidOperationException>(() => lora.Multiplier = 0.5);
        Assert.Equal("lora_unet_x: unmerge before changing the multiplier", e.Message);
        lora.Attach(); // no effect while merged: the delta must not count twice
        Assert.False(lora.IsAttached);
        lora.Merge(); // twice is once
        lora.Unmerge();
        Assert.True(lora.IsAttached);
        lora.Detach();

        var (layer2, detached) = Linear();
        detached.SetWeights(torch.randn(2, 6), torch.randn(4, 2));
        using var before = layer2.weight!.detach().clone();
        detached.Merge();
        Assert.False(torch.equal(before, layer2.weight!).all().item<bool>());
        detached.Unmerge();
        Assert.False(detached.IsAttached);
        Assert.True(torch.allclose(before, layer2.weight!, rtol: 0, atol: 1e-6));
        detached.Unmerge(); // not merged: nothing to undo
        Assert.True(torch.allclose(before, layer2.weight!, rtol: 0, atol: 1e-6));
        Assert.NotNull(layer);
    }

    [Theory]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    public void A_low_precision_weight_is_merged_in_fp32_and_rounded_once(ScalarType dtype)
    {
        var (layer, lora) = Linear();
        lora.SetWeights(torch.randn(2, 6, generator: new Generator(1, CPU)), torch.randn(4, 2, generator: new Generator(2, CPU)));
        layer.to(dtype);
        using var base32 = layer.weight!.to(ScalarType.Float32);
        using var expected = (base32 + lora.DeltaWeight()).to(dtype);

        lora.Merge();

        Assert.Equal(dtype, layer.weight!.dtype);
        Assert.True(torch.equal(expected, layer.weight!).all().item<bool>());
    }

    [Fact]
    public void Dropout_with_a_generator_keeps_each_input_with_probability_1_minus_p_and_scales_the_kept()
    {
        var (layer, lora) = Linear(rank: 6, inF: 6, outF: 6);
        // down = identity, up = identity, alpha = rank: the adapter adds its (dropped-out) input.
        lora.SetWeights(torch.eye(6), torch.eye(6));
        lora.Attach();
        lora.Dropout = 0.5;
        using var x = torch.ones(4000, 6);
        using var noAdapter = nn.functional.linear(x, layer.weight!, layer.bias);

        lora.DropoutGenerator = new Generator(3, CPU);
        lora.train();
        using var added = layer.forward(x) - noAdapter;
        var values = added.flatten().data<float>().ToArray();
        Assert.All(values, v => Assert.True(Math.Abs(v) < 1e-5 || Math.Abs(v - 2) < 1e-5, $"{v}")); // dropped, or kept and doubled
        Assert.InRange(values.Count(v => v > 1) / (double)values.Length, 0.47, 0.53);

        lora.DropoutGenerator = new Generator(3, CPU);
        using var again = layer.forward(x) - noAdapter;
        Assert.True(torch.equal(added, again).all().item<bool>()); // the same masks from the same seed

        lora.eval();
        using var inEval = layer.forward(x) - noAdapter;
        Assert.True(torch.allclose(inEval, torch.ones_like(inEval), rtol: 0, atol: 1e-5)); // no dropout outside training
    }

    [Fact]
    public void Seeded_initialisation_draws_down_within_kaimings_bound_for_the_fan_in()
    {
        var layer = new AdaptableConv2d(8, 4, 3, padding: 1);
        var lora = new LoraConv("lora_unet_c", LoraPart.Unet, layer, 16, null);
        lora.ResetParameters(new Generator(5, CPU));
        double bound = 1 / Math.Sqrt(8 * 3 * 3);
        var down = lora.DownWeight.flatten().data<float>().ToArray();
        Assert.All(down, v => Assert.InRange(v, -bound, bound));
        Assert.True(down.Max() > 0.9 * bound && down.Min() < -0.9 * bound, $"{down.Min()} .. {down.Max()} of ±{bound}");
        Assert.Equal(0f, lora.UpWeight.abs().max().item<float>());
    }
}
