using SdLora.Lora;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

public class LoraModuleTests
{
    private static void RandomizeUp(LoraModule m) { using var _ = torch.no_grad(); m.UpWeight.normal_(0, 0.5); }

    [Fact]
    public void Fresh_lora_leaves_output_unchanged_and_uses_kohya_init()
    {
        torch.manual_seed(0);
        using var layer = new AdaptableLinear(8, 5);
        using var lora = new LoraLinear("lora_unet_x", LoraPart.Unet, layer, 4, alpha: 0);
        Assert.Equal(1.0, lora.Scale); // alpha 0 means alpha = rank
        Assert.Equal(0.0, lora.UpWeight.abs().max().item<float>());
        Assert.True(lora.DownWeight.abs().max().item<float>() > 0);
        Assert.Equal(new[] { "lora_down.weight", "lora_up.weight" }, lora.named_parameters().Select(p => p.name).ToArray());
        var x = torch.randn(3, 8);
        var y0 = layer.forward(x);
        lora.Attach();
        Assert.True(torch.equal(y0, layer.forward(x)).all().item<bool>());
    }

    [Fact]
    public void Linear_forward_is_base_plus_multiplier_scale_up_down()
    {
        torch.manual_seed(1);
        using var layer = new AdaptableLinear(8, 5);
        using var lora = new LoraLinear("l", LoraPart.Unet, layer, 4, alpha: 2);
        RandomizeUp(lora);
        lora.Multiplier = 0.7;
        var x = torch.randn(3, 8);
        var expected = layer.forward(x) + 0.7 * 0.5 * x.mm(lora.DownWeight.t()).mm(lora.UpWeight.t());
        lora.Attach();
        Fixtures.AssertClose(expected, layer.forward(x), 1e-6, "lora forward");
        lora.Detach();
        Fixtures.AssertClose(expected - 0.35 * x.mm(lora.DownWeight.t()).mm(lora.UpWeight.t()), layer.forward(x), 1e-6, "detached");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void In_a_layer_computing_natively_in_bf16_the_adapter_computes_in_bf16_with_fp32_factors_trained(bool conv)
    {
        torch.manual_seed(3);
        using var scope = torch.NewDisposeScope();
        nn.Module<Tensor, Tensor> layer = conv ? new AdaptableConv2d(6, 7, 3, padding: 1) : new AdaptableLinear(24, 7);
        layer.to(ScalarType.BFloat16);
        LoraModule lora = conv ? new LoraConv("c", LoraPart.Unet, (AdaptableConv2d)layer, 4, alpha: 2) : new LoraLinear("l", LoraPart.Unet, (AdaptableLinear)layer, 4, alpha: 2);
        RandomizeUp(lora);
        Assert.Equal(ScalarType.Float32, lora.DownWeight.dtype);
        var x = (conv ? torch.randn(2, 6, 5, 5) : torch.randn(3, 24)).to(ScalarType.BFloat16);
        Tensor Delta(Tensor input, ScalarType dtype)
        {
            var down = lora.DownWeight.to(dtype);
            var up = lora.UpWeight.to(dtype);
            var h = conv ? Convolutions.Conv2d(input.to(dtype), down, null, 1, 1) : nn.functional.linear(input.to(dtype), down);
            return (conv ? Convolutions.Conv2d(h, up, null, 1, 0) : nn.functional.linear(h, up)).mul(0.5).to(ScalarType.BFloat16);
        }
        var inBf16 = Delta(x, ScalarType.BFloat16);
        var inFp32 = Delta(x, ScalarType.Float32);
        Assert.False(torch.equal(inBf16, inFp32).all().item<bool>(), "the two precisions should round differently on this input");

        CpuPrecision.Apply(layer, CpuLowPrecision.Native);
        Assert.True(torch.equal(inBf16, lora.Forward(x)).all().item<bool>(), "native bf16 layer: adapter in bf16");
        // A layer that upcasts bf16 to fp32 on the CPU (no bf16 hardware) keeps its adapter in the factors' fp32.
        CpuPrecision.Apply(layer, CpuLowPrecision.Upcast);
        Assert.True(torch.equal(inFp32, lora.Forward(x)).all().item<bool>(), "upcasting layer: adapter in fp32");

        // Training through the bf16 adapter: the gradient reaches the fp32 factors, in fp32.
        CpuPrecision.Apply(layer, CpuLowPrecision.Native);
        lora.train();
        lora.Forward(x).to(ScalarType.Float32).square().sum().backward();
        Assert.Equal(ScalarType.Float32, lora.DownWeight.grad!.dtype);
        Assert.True(lora.DownWeight.grad!.abs().sum().item<float>() > 0);
        Assert.True(lora.UpWeight.grad!.abs().sum().item<float>() > 0);
    }

    [Fact]
    public void Merge_matches_runtime_adapter_and_unmerge_restores_base_weight()
    {
        torch.manual_seed(2);
        using var layer = new AdaptableConv2d(6, 7, 3, stride: 2, padding: 1);
        using var lora = new LoraConv("c", LoraPart.Unet, layer, 3, alpha: 1.5);
        RandomizeUp(lora);
        lora.Multiplier = -0.8;
        var x = torch.randn(2, 6, 9, 9);
        var original = layer.weight.detach().clone();
        lora.Attach();
        var runtime = layer.forward(x);
        lora.Merge();
        Assert.False(lora.IsAttached);
        Fixtures.AssertClose(runtime, layer.forward(x), 1e-5, "merged conv vs runtime LoCon");
        lora.Unmerge();
        Assert.True(lora.IsAttached);
        Fixtures.AssertClose(original, layer.weight, 1e-6, "unmerged weight");
        var before = layer.weight.detach().clone();
        lora.Merge(keepOriginal: true);
        lora.Unmerge();
        Assert.True(torch.equal(before, layer.weight).all().item<bool>(), "keepOriginal restores bit-exactly");
    }

    [Fact]
    public void Lora_computes_in_fp32_and_returns_layer_dtype()
    {
        torch.manual_seed(3);
        using var layer = new AdaptableLinear(4, 4);
        layer.to(ScalarType.BFloat16);
        using var lora = new LoraLinear("l", LoraPart.Unet, layer, 2, 2);
        RandomizeUp(lora);
        Assert.Equal(ScalarType.Float32, lora.DownWeight.dtype);
        lora.Attach();
        var y = layer.forward(torch.randn(2, 4).to(ScalarType.BFloat16));
        Assert.Equal(ScalarType.BFloat16, y.dtype);
    }

    [Fact]
    public void Network_targets_attention_by_default_and_more_on_request()
    {
        var (unet, te) = FakeModels.Small();
        using var attn = LoraNetwork.Create(unet, te, new LoraNetworkOptions());
        Assert.Equal(5, attn.UnetModules.Count());
        Assert.Contains(attn.Modules, m => m.LoraName == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0");
        Assert.Equal(3, attn.TextEncoderModules.Count());
        Assert.Contains(attn.Modules, m => m.LoraName == "lora_te_text_model_encoder_layers_0_self_attn_q_proj");
        attn.Dispose();

        using var all = LoraNetwork.Create(unet, te, new LoraNetworkOptions
        {
            UnetTargets = LoraUnetTargets.KohyaDefault | LoraUnetTargets.Convs, ConvRank = 2, ConvAlpha = 1, TrainTextEncoder = false,
        });
        Assert.Equal(12, all.Modules.Count); // everything but conv_in
        Assert.Empty(all.TextEncoderModules);
        var conv = all.Modules.Single(m => m.LoraName == "lora_unet_down_blocks_0_resnets_0_conv1");
        Assert.Equal(2, conv.Rank);
        Assert.Equal(new long[] { 2, 8, 3, 3 }, conv.DownWeight.shape);
        Assert.Equal(4, all.Modules.Single(m => m.LoraName == "lora_unet_down_blocks_0_resnets_0_time_emb_proj").Rank);
    }

    [Fact]
    public void Several_loras_attach_together_and_detach_restores_exact_base_output()
    {
        var (unet, _) = FakeModels.Small();
        var layer = FakeModels.Layer<AdaptableLinear>(unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
        var x = torch.randn(2, 8);
        var baseOut = layer.forward(x);
        using var a = LoraNetwork.Create(unet, null, new LoraNetworkOptions());
        using var b = LoraNetwork.Create(unet, null, new LoraNetworkOptions { Rank = 2 });
        foreach (var m in a.Modules.Concat(b.Modules)) RandomizeUp(m);
        a.Multiplier = 0.5; b.Multiplier = 1.5;
        a.Attach(); b.Attach();
        var qa = a.Modules.Single(m => m.LoraName.EndsWith("attn1_to_q"));
        var qb = b.Modules.Single(m => m.LoraName.EndsWith("attn1_to_q"));
        Fixtures.AssertClose(baseOut + qa.Forward(x) + qb.Forward(x), layer.forward(x), 1e-6, "two loras");
        a.Detach(); b.Detach();
        Assert.True(torch.equal(baseOut, layer.forward(x)).all().item<bool>());
    }

    [Fact]
    public void Seeded_generator_gives_the_same_kohya_init_whatever_the_global_generator_does()
    {
        var (unet, te) = FakeModels.Small();
        var options = new LoraNetworkOptions { Rank = 2, Alpha = 1 };
        using var g1 = new Generator(7UL, CPU);
        using var a = LoraNetwork.Create(unet, te, options, g1);
        torch.randn(1000).Dispose(); // another user of the global generator in between
        using var g2 = new Generator(7UL, CPU);
        using var b = LoraNetwork.Create(unet, te, options, g2);
        foreach (var (x, y) in a.Modules.Zip(b.Modules))
        {
            Assert.True(x.DownWeight.equal(y.DownWeight).all().item<bool>(), x.LoraName);
            double bound = 1.0 / Math.Sqrt(x.DownWeight.shape.Skip(1).Aggregate(1L, (p, q) => p * q));
            Assert.True(x.DownWeight.abs().max().item<float>() <= bound, "kaiming-uniform bound");
            Assert.Equal(0f, x.UpWeight.abs().max().item<float>());
        }
    }
}
