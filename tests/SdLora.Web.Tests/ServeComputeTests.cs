using TorchSharp;
using Xunit;

namespace SdLora.Web.Tests;

/// <summary>
/// The server's precision follows <c>--dtype auto</c> like the CLI's: the policy takes the CPU probe the program hands
/// the server, so both branches (bf16 hardware, AVX2 only) are checked on any machine.
/// </summary>
public class ServeComputeTests
{
    private static CpuKernelProbeResult Probe(double bf16Speedup) =>
        new(150, 150 * bf16Speedup,
        [
            new KernelSpeed("conv", "fp32", 1.0, 1.0 / 150, 2.0 / 150, Round: 2),
            new KernelSpeed("conv", "bf16", 1.0, 1.0 / (150 * bf16Speedup), 2.0 / (150 * bf16Speedup), Round: 2),
        ], Threads: 2, Seconds: 0.1);

    [Fact]
    public void Serve_defaults_to_dtype_auto_and_computes_bf16_natively_where_the_probe_found_it_faster()
    {
        var options = new ServeOptions { CpuProbe = () => Probe(2.0) }.Validate();
        Assert.Equal("auto", options.DType);
        var compute = options.Compute();
        Assert.Equal(torch.ScalarType.BFloat16, compute.DType);
        Assert.Equal(CpuLowPrecision.Native, compute.CpuLowPrecision);
    }

    [Fact]
    public void Serve_auto_is_fp32_where_bf16_is_emulated_or_nothing_was_measured()
    {
        Assert.Equal(torch.ScalarType.Float32, new ServeOptions { CpuProbe = () => Probe(0.02) }.Compute().DType);
        Assert.Equal(torch.ScalarType.Float32, new ServeOptions().Compute().DType);
    }

    [Fact]
    public void A_training_job_s_own_dtype_resolves_with_the_server_s_probe_and_a_forced_dtype_skips_it()
    {
        int probes = 0;
        var options = new ServeOptions { CpuProbe = () => { probes++; return Probe(2.0); } };
        Assert.Equal(torch.ScalarType.Float32, options.Compute("fp32").DType);
        Assert.Equal(0, probes);
        Assert.Equal(torch.ScalarType.BFloat16, options.Compute("auto", "cpu").DType);
        Assert.Equal(1, probes);
        Assert.Throws<SdLoraException>(() => new ServeOptions { DType = "fp64" }.Validate());
    }
}
