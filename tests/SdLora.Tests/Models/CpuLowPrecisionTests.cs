using SdLora.Models;
using SdLora.Pipelines;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Models;

/// <summary>The CPU low-precision policy of <see cref="ComputeOptions"/>: both branches, on any CPU.</summary>
public class CpuLowPrecisionTests
{
    [Fact]
    public void Upcast_is_the_default_policy()
    {
        Assert.Equal(CpuLowPrecision.Upcast, ComputeOptions.CpuFloat32.CpuLowPrecision);
        Assert.Equal(CpuLowPrecision.Upcast, ComputeOptions.Parse("cpu", "bf16").CpuLowPrecision);
        using var layer = new AdaptableLinear(4, 3);
        Assert.Equal(CpuLowPrecision.Upcast, layer.CpuLowPrecision);
    }

    [Fact]
    public void Upcast_layers_compute_bf16_in_fp32_and_native_layers_in_bf16()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var g = new Generator(11, CPU);
        using var linear = new AdaptableLinear(64, 48);
        using var conv = new AdaptableConv2d(8, 16, 3, padding: 1);
        linear.to(ScalarType.BFloat16);
        conv.to(ScalarType.BFloat16);
        var x = torch.randn([5, 64], generator: g).to(ScalarType.BFloat16);
        var image = torch.randn([2, 8, 6, 6], generator: g).to(ScalarType.BFloat16);

        // The reference for each branch runs the very same operations, so the comparison is exact.
        var upcastLinear = nn.functional.linear(x.to(ScalarType.Float32), linear.weight.to(ScalarType.Float32), linear.bias!.to(ScalarType.Float32)).to(ScalarType.BFloat16);
        var nativeLinear = nn.functional.linear(x, linear.weight, linear.bias);
        var upcastConv = nn.functional.conv2d(image.to(ScalarType.Float32), conv.weight.to(ScalarType.Float32), conv.bias!.to(ScalarType.Float32), padding: [1, 1]).to(ScalarType.BFloat16);
        var nativeConv = nn.functional.conv2d(image, conv.weight, conv.bias, padding: [1, 1]);

        CpuPrecision.Apply(linear, CpuLowPrecision.Upcast);
        CpuPrecision.Apply(conv, CpuLowPrecision.Upcast);
        Assert.True(torch.equal(upcastLinear, linear.forward(x)).all().item<bool>(), "upcast linear");
        Assert.True(torch.equal(upcastConv, conv.forward(image)).all().item<bool>(), "upcast conv");

        CpuPrecision.Apply(linear, CpuLowPrecision.Native);
        CpuPrecision.Apply(conv, CpuLowPrecision.Native);
        Assert.True(torch.equal(nativeLinear, linear.forward(x)).all().item<bool>(), "native linear");
        Assert.True(torch.equal(nativeConv, conv.forward(image)).all().item<bool>(), "native conv");
        Assert.Equal(ScalarType.BFloat16, linear.forward(x).dtype);
    }

    [Fact]
    public void Fp32_layers_compute_the_same_under_both_policies()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        using var layer = new AdaptableLinear(16, 8);
        var x = torch.randn([3, 16], generator: new Generator(2, CPU));
        var upcast = layer.forward(x);
        layer.CpuLowPrecision = CpuLowPrecision.Native;
        Assert.True(torch.equal(upcast, layer.forward(x)).all().item<bool>());
    }

    [Fact]
    public void Models_loaded_with_different_policies_keep_their_own_in_one_process()
    {
        var path = Fixtures.CopiedSet("tiny-sd15");
        using var upcast = StableDiffusionModel.Load(path, compute: new ComputeOptions(CPU, ScalarType.BFloat16));
        using var native = StableDiffusionModel.Load(path, compute: new ComputeOptions(CPU, ScalarType.BFloat16, CpuLowPrecision.Native));
        using var reference = StableDiffusionModel.Load(path);
        foreach (var (model, policy) in new[] { (upcast, CpuLowPrecision.Upcast), (native, CpuLowPrecision.Native) })
        {
            Assert.Equal(policy, model.Compute.CpuLowPrecision);
            var layers = new nn.Module[] { model.UNet, model.Vae, model.TextEncoder }
                .SelectMany(m => m.named_modules()).Select(m => m.module).OfType<ICpuLowPrecisionLayer>().ToList();
            Assert.NotEmpty(layers);
            Assert.All(layers, l => Assert.Equal(policy, l.CpuLowPrecision));
        }

        // Both compute the UNet's noise prediction as closely to fp32 as bf16 allows.
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var config = reference.UNet.Config;
        using var g = new Generator(4, CPU);
        var sample = torch.randn([1, config.InChannels, 8, 8], generator: g);
        var context = torch.randn([1, 77, config.CrossAttentionDim], generator: g);
        var t = torch.tensor(400L);
        var expected = reference.UNet.forward(sample, t, context);
        foreach (var (model, name) in new[] { (upcast, "upcast"), (native, "native") })
        {
            var output = model.UNet.forward(sample.to(ScalarType.BFloat16), t, context.to(ScalarType.BFloat16));
            Assert.Equal(ScalarType.BFloat16, output.dtype);
            Fixtures.AssertClose(expected, output.to(ScalarType.Float32), Tolerance.Bf16VsFp32, $"{name} bf16 noise prediction");
        }
    }

    [Theory]
    [InlineData(100, 300, CpuLowPrecision.Native)]   // bf16 hardware: native 3x faster
    [InlineData(100, 111, CpuLowPrecision.Native)]
    [InlineData(100, 105, CpuLowPrecision.Upcast)]   // within measurement noise: keep the safe default
    [InlineData(100, 2, CpuLowPrecision.Upcast)]     // AVX2 only: native bf16 is emulated and slow
    public void A_measured_probe_chooses_native_only_where_it_is_clearly_faster(double fp32, double lowPrecision, CpuLowPrecision expected)
    {
        Assert.Equal(expected, ComputeOptions.ChooseCpuLowPrecision(fp32, lowPrecision));
    }

    [Fact]
    public void A_probe_without_a_measurement_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ComputeOptions.ChooseCpuLowPrecision(0, 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => ComputeOptions.ChooseCpuLowPrecision(double.NaN, 10));
    }
}
