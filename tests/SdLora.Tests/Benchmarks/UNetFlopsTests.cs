using SdLora.Benchmarks;
using SdLora.Models;
using Xunit;
using Xunit.Abstractions;

namespace SdLora.Tests.Benchmarks;

public class UNetFlopsTests(ITestOutputHelper output)
{
    [Fact]
    public void SD15_forward_costs_about_0_8_TFLOP_per_64x64_latent()
    {
        double perLatent = UNetFlops.Forward(UNetConfig.StableDiffusion15, 1, 64, 64, 77);
        output.WriteLine($"SD1.5 UNet forward, 64x64 latent, 77 tokens: {perLatent / 1e9:F1} GFLOP");
        Assert.InRange(perLatent, 0.75e12, 0.9e12);
        Assert.Equal(2 * perLatent, UNetFlops.Forward(UNetConfig.StableDiffusion15, 2, 64, 64, 77), 6);
    }
}
