using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests;

public class LayersTests
{
    private sealed class AddOne : ILayerAdapter { public Tensor Forward(Tensor input) => torch.ones_like(input.sum(-1, keepdim: true)); }

    [Fact]
    public void Adaptable_linear_registers_reference_names_and_adds_adapter_output()
    {
        using var lin = new AdaptableLinear(3, 2);
        Assert.Equal(new[] { "weight", "bias" }, lin.named_parameters().Select(p => p.name).ToArray());
        var x = torch.randn(4, 3);
        var baseOut = lin.forward(x);
        var adapter = new AddOne();
        lin.AddAdapter(adapter);
        Assert.True(torch.allclose(lin.forward(x), baseOut + 1));
        lin.RemoveAdapter(adapter);
        Assert.True(torch.allclose(lin.forward(x), baseOut));
    }

    [Fact]
    public void Module_weights_load_by_name_and_report_shape_mismatch()
    {
        using var conv = new AdaptableConv2d(2, 4, 3, padding: 1);
        var w = torch.randn(4, 2, 3, 3); var b = torch.randn(4);
        ModuleWeights.Load(conv, new DictionaryTensorSource(new Dictionary<string, Tensor> { ["weight"] = w, ["bias"] = b }));
        Assert.True(torch.equal(conv.weight, w).all().item<bool>());
        var bad = new DictionaryTensorSource(new Dictionary<string, Tensor> { ["weight"] = torch.randn(4, 2, 1, 1), ["bias"] = b }, "bad.safetensors");
        var ex = Assert.Throws<SdLoraException>(() => ModuleWeights.Load(conv, bad));
        Assert.Contains("bad.safetensors", ex.Message);
        Assert.Contains("'weight'", ex.Message);
    }
    // oneDNN's CPU convolution with channel counts off its block of 16: wrong or NaN input gradients (output
    // channels; stride 2 with an odd number of input blocks), wrong or NaN outputs (more than 16 input channels),
    // unless padded (see Convolutions). The heap is filled with NaN between passes so that the
    // uncleared padding, if any, holds NaN; checked against a float64 computation, which does not use oneDNN.
    [Theory]
    [InlineData(32, 8, 3, 1)]
    [InlineData(32, 4, 3, 2)]
    [InlineData(24, 3, 1, 1)]
    [InlineData(24, 8, 3, 1)]
    [InlineData(40, 32, 3, 2)]
    [InlineData(48, 32, 3, 2)]
    public void Convolution_output_and_input_gradient_are_exact_for_channel_counts_off_the_block(int inChannels, int outChannels, int kernel, int stride)
    {
        var generator = new Generator(7);
        var weight = torch.randn([outChannels, inChannels, kernel, kernel], generator: generator).mul(0.05);
        var bias = torch.randn([outChannels], generator: generator);
        for (int pass = 0; pass < 40; pass++)
        {
            using var scope = torch.NewDisposeScope();
            for (int i = 0; i < 8; i++) torch.full([1 << 20], float.NaN).Dispose();
            var input = torch.randn([2, inChannels, 16, 16], generator: generator).requires_grad_(true);
            var output = Convolutions.Conv2d(input, weight, bias, stride, kernel / 2);
            Assert.Equal(outChannels, output.shape[1]);
            output.square().sum().backward();

            var exactInput = input.detach().to(ScalarType.Float64).requires_grad_(true);
            var exact = nn.functional.conv2d(exactInput, weight.to(ScalarType.Float64), bias.to(ScalarType.Float64), strides: [stride, stride], padding: [kernel / 2, kernel / 2]);
            exact.square().sum().backward();
            Assert.True(torch.allclose(output.detach().to(ScalarType.Float64), exact.detach(), rtol: 1e-4, atol: 1e-4), $"pass {pass}: output");
            Assert.True(torch.isfinite(input.grad!).all().item<bool>(), $"pass {pass}: non-finite input gradient");
            Assert.True(torch.allclose(input.grad!.to(ScalarType.Float64), exactInput.grad!, rtol: 1e-4, atol: 1e-4), $"pass {pass}: input gradient");
            using (torch.no_grad())
                Assert.True(torch.allclose(Convolutions.Conv2d(input.detach(), weight, bias, stride, kernel / 2).to(ScalarType.Float64), exact.detach(), rtol: 1e-4, atol: 1e-4), $"pass {pass}: inference");
        }
    }

    // bf16 on AVX512-BF16 without AMX: oneDNN's 3x3 convolution with output channels off the block of 16 was wrong
    // by a quarter of its size (see Convolutions); bf16 rounding alone stays well under 1 %.
    [Theory]
    [InlineData(320, 4, 1)]
    [InlineData(32, 24, 2)]
    [InlineData(32, 48, 1)]
    public void Bf16_convolution_matches_fp32_within_rounding_for_any_output_channel_count(int inChannels, int outChannels, int stride)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var generator = new Generator(3);
        var input = torch.randn([1, inChannels, 16, 16], generator: generator);
        var weight = torch.randn([outChannels, inChannels, 3, 3], generator: generator).mul(0.1);
        var bias = torch.randn([outChannels], generator: generator);
        var exact = Convolutions.Conv2d(input, weight, bias, stride, 1);
        var bf16 = Convolutions.Conv2d(input.to(ScalarType.BFloat16), weight.to(ScalarType.BFloat16), bias.to(ScalarType.BFloat16), stride, 1);
        Assert.Equal(ScalarType.BFloat16, bf16.dtype);
        Fixtures.AssertClose(exact, bf16.to(ScalarType.Float32), Tolerance.Golden(0.02), "bf16 convolution");
        Assert.True(torch.allclose(exact, nn.functional.conv2d(input, weight, bias, strides: [stride, stride], padding: [1, 1]), rtol: 1e-5, atol: 1e-5));
    }

    // TorchSharp's nn.GroupNorm leaves its weight and bias unset: a model built from scratch on a heap that held large
    // numbers started with group norms of 1e30 and trained into NaN (see Normalization).
    [Fact]
    public void Models_built_from_scratch_start_their_group_norms_at_one_and_zero()
    {
        for (int i = 0; i < 32; i++) torch.full([1 << 16], 1e30f).Dispose();
        for (int i = 0; i < 256; i++) torch.full([64], 1e30f).Dispose();
        using var unet = new UNet2DConditionModel(new UNetConfig(BlockOutChannels: [8, 16, 16, 16], LayersPerBlock: 1, NormNumGroups: 4,
            CrossAttentionDim: 8, AttentionHeadDim: [2, 2, 2, 2], SampleSize: 8));
        using var vae = new AutoencoderKL(new AutoencoderKLConfig(BlockOutChannels: [8, 8, 8, 8], LayersPerBlock: 1, NormNumGroups: 4, SampleSize: 64));
        foreach (var model in new nn.Module[] { unet, vae })
        {
            var norms = model.named_modules().Where(m => m.module is TorchSharp.Modules.GroupNorm).ToList();
            Assert.NotEmpty(norms);
            foreach (var (name, module) in norms)
            {
                var norm = (TorchSharp.Modules.GroupNorm)module;
                Assert.True(torch.all(norm.weight! == 1).item<bool>(), $"{name}.weight");
                Assert.True(torch.all(norm.bias! == 0).item<bool>(), $"{name}.bias");
            }
            Assert.All(model.named_parameters(), p => Assert.True(torch.isfinite(p.parameter).all().item<bool>() && p.parameter.abs().max().item<float>() < 100, p.name));
        }
        // Built to be loaded, it leaves them unset like every other layer.
        var skipped = ModuleInitialization.WithoutRandomInit(() => Normalization.GroupNorm(2, 4, 1e-5));
        Assert.Equal([4L], skipped.weight!.shape);
    }
}
