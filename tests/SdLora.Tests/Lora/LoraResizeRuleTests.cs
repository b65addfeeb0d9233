using SdLora.IO;
using SdLora.Lora;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>
/// <c>lora resize</c>'s choices, pinned against kohya's resize_lora.py worked by hand: a LoRA is built whose
/// <c>up @ down</c> has the singular values 8, 4, 2, 1, 0.5, 0.25, 0.125, 0.0625, so each dynamic rule's rank can be
/// counted on paper (sv_ratio: values above S0 / p; sv_cumulative: first running share of the sum >= p, plus one;
/// sv_fro: the same on squares against p², each at least 1 and capped by --rank).
/// </summary>
public sealed class LoraResizeRuleTests
{
    private static readonly float[] Singular = [8f, 4f, 2f, 1f, 0.5f, 0.25f, 0.125f, 0.0625f];

    /// <summary>Rank-8 factors of a [16, 20] delta with <see cref="Singular"/> as its singular values (alpha 8: scale 1).</summary>
    private static (Tensor Down, Tensor Up) KnownSpectrum(int seed)
    {
        var g = new Generator((ulong)seed);
        var (left, _) = torch.linalg.qr(torch.randn(16, 8, generator: g));
        var (right, _) = torch.linalg.qr(torch.randn(20, 8, generator: g));
        return (right.t().contiguous(), left.mul(torch.tensor(Singular).unsqueeze(0)));
    }

    private static LoraFile Write(TempDir dir, IReadOnlyDictionary<string, string>? extraMetadata = null, bool zero = false)
    {
        var (down, up) = KnownSpectrum(5);
        if (zero) up = torch.zeros_like(up);
        var conv3Down = torch.randn(8, 6, 3, 3, generator: new Generator(6)); var conv3Up = torch.randn(5, 8, 1, 1, generator: new Generator(7));
        var conv1Down = torch.randn(8, 6, 1, 1, generator: new Generator(8)); var conv1Up = torch.randn(5, 8, 1, 1, generator: new Generator(9));
        var metadata = new Dictionary<string, string>(KohyaMetadata.Build(8, 8));
        foreach (var (k, v) in extraMetadata ?? new Dictionary<string, string>()) metadata[k] = v;
        var path = dir.File("r8.safetensors");
        KohyaLoraWriter.Save(path,
            KohyaLoraWriter.ModuleTensors("lora_unet_a_to_q", down, up, 8)
                .Concat(KohyaLoraWriter.ModuleTensors("lora_unet_b_conv1", conv3Down, conv3Up, 8))
                .Concat(KohyaLoraWriter.ModuleTensors("lora_unet_b_proj_in", conv1Down, conv1Up, 8)),
            metadata, ScalarType.Float32);
        return LoraFile.Read(path);
    }

    [Theory]
    [InlineData(LoraResizeMethod.SvRatio, 3.0, 8, 2)]        // 8, 4 > 8/3
    [InlineData(LoraResizeMethod.SvRatio, 20.0, 8, 5)]       // 8 .. 0.5 > 0.4
    [InlineData(LoraResizeMethod.SvRatio, 20.0, 4, 4)]       // capped by --rank
    [InlineData(LoraResizeMethod.SvCumulative, 0.9, 8, 4)]   // running share 0.50 0.75 0.88 0.94: index 3, + 1
    [InlineData(LoraResizeMethod.SvCumulative, 0.99, 8, 7)]  // ... 0.973 0.988 0.996: index 6, + 1
    [InlineData(LoraResizeMethod.SvFro, 0.95, 8, 2)]         // squares' share 0.750 0.9375 >= 0.9025: index 1, + 1
    [InlineData(LoraResizeMethod.SvFro, 0.999, 8, 5)]        // ... 0.9844 0.9961 0.9990 >= 0.998: index 4, + 1
    public void Dynamic_resize_keeps_the_rank_kohyas_rule_gives(LoraResizeMethod method, double parameter, int maxRank, int expected)
    {
        using var dir = Fixtures.TempDir();
        using var scope = torch.NewDisposeScope();
        using var lora = Write(dir);
        var (tensors, reports, _) = LoraSvd.Resize(lora, new LoraResizeOptions { Rank = maxRank, Method = method, Parameter = parameter });
        var q = reports.Single(r => r.Name == "lora_unet_a_to_q");
        Assert.Equal(expected, q.NewRank);
        Assert.Equal(expected, q.NewAlpha, 6); // old scale 1 kept: alpha = scale x new rank
        Assert.Equal(new long[] { expected, 20 }, tensors.Single(kv => kv.Key == "lora_unet_a_to_q.lora_down.weight").Value.shape);
        Assert.Equal(new long[] { 16, expected }, tensors.Single(kv => kv.Key == "lora_unet_a_to_q.lora_up.weight").Value.shape);
    }

    [Fact]
    public void A_module_whose_delta_is_zero_keeps_rank_one()
    {
        using var dir = Fixtures.TempDir();
        using var scope = torch.NewDisposeScope();
        using var lora = Write(dir, zero: true);
        foreach (var method in new[] { LoraResizeMethod.SvRatio, LoraResizeMethod.SvFro, LoraResizeMethod.SvCumulative })
            Assert.Equal(1, LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 8, Method = method, Parameter = 0.5 }).Modules.Single(r => r.Name == "lora_unet_a_to_q").NewRank);
    }

    [Fact]
    public void Conv_rank_applies_to_three_by_three_convolutions_only()
    {
        using var dir = Fixtures.TempDir();
        using var scope = torch.NewDisposeScope();
        using var lora = Write(dir);
        var reports = LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 3, ConvRank = 5 }).Modules;
        Assert.Equal(3, reports.Single(r => r.Name == "lora_unet_a_to_q").NewRank);
        Assert.Equal(5, reports.Single(r => r.Name == "lora_unet_b_conv1").NewRank);
        Assert.Equal(3, reports.Single(r => r.Name == "lora_unet_b_proj_in").NewRank); // a 1x1 conv is a linear layer
        // Without --conv-rank every module takes --rank.
        Assert.Equal(3, LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 3 }).Modules.Single(r => r.Name == "lora_unet_b_conv1").NewRank);
    }

    [Fact]
    public void A_fixed_resize_writes_kohyas_comment_dim_and_alpha_and_drops_the_stale_hashes()
    {
        using var dir = Fixtures.TempDir();
        using var scope = torch.NewDisposeScope();
        using var lora = Write(dir, new Dictionary<string, string> { ["ss_training_comment"] = "my dog", ["sshs_model_hash"] = "abc", ["sshs_legacy_hash"] = "def" });
        var metadata = LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 3, ConvRank = 5 }).Metadata;
        Assert.Equal("dimension is resized from 8 to 3 (conv: 5); my dog", metadata["ss_training_comment"]);
        Assert.Equal("3", metadata["ss_network_dim"]);
        Assert.Equal("3.0", metadata["ss_network_alpha"]); // the last module's alpha (scale 1 x rank 3), as kohya writes it
        Assert.DoesNotContain(metadata.Keys, k => k.StartsWith("sshs_", StringComparison.Ordinal));
        Assert.Equal("networks.lora", metadata["ss_network_module"]);

        var same = LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 3, ConvRank = 3 }).Metadata;
        Assert.Equal("dimension is resized from 8 to 3; my dog", same["ss_training_comment"]);
    }

    [Fact]
    public void A_dynamic_resize_says_so_in_its_metadata()
    {
        using var dir = Fixtures.TempDir();
        using var scope = torch.NewDisposeScope();
        using var lora = Write(dir);
        var metadata = LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 8, Method = LoraResizeMethod.SvFro, Parameter = 0.95 }).Metadata;
        Assert.Equal("Dynamic resize with sv_fro: 0.95 from 8; ", metadata["ss_training_comment"]);
        Assert.Equal("Dynamic", metadata["ss_network_dim"]);
        Assert.Equal("Dynamic", metadata["ss_network_alpha"]);
        Assert.Equal("Dynamic resize with sv_ratio: 2 from 8; ",
            LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 8, Method = LoraResizeMethod.SvRatio, Parameter = 2 }).Metadata["ss_training_comment"]);
        Assert.Equal("Dynamic resize with sv_cumulative: 0.5 from 8; ",
            LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 8, Method = LoraResizeMethod.SvCumulative, Parameter = 0.5 }).Metadata["ss_training_comment"]);
    }

    [Fact]
    public void Ranks_and_dynamic_parameters_that_are_not_positive_are_refused_by_name()
    {
        using var dir = Fixtures.TempDir();
        using var scope = torch.NewDisposeScope();
        using var lora = Write(dir);
        Assert.Equal("--rank must be a positive number (got 0)",
            Assert.Throws<SdLoraException>(() => LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 0 })).Message);
        Assert.Equal("--conv-rank must be a positive number (got 0)",
            Assert.Throws<SdLoraException>(() => LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 4, ConvRank = 0 })).Message);
        Assert.Equal("--dynamic sv_fro needs a positive parameter (e.g. sv_fro:0.9)",
            Assert.Throws<SdLoraException>(() => LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 4, Method = LoraResizeMethod.SvFro, Parameter = 0 })).Message);
        Assert.Equal("--dynamic sv_ratio needs a positive parameter (e.g. sv_ratio:2)",
            Assert.Throws<SdLoraException>(() => LoraSvd.Resize(lora, new LoraResizeOptions { Rank = 4, Method = LoraResizeMethod.SvRatio, Parameter = double.NaN })).Message);
    }
}
