using SdLora.Benchmarks;
using SdLora.Models;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace SdLora.Tests.Models;

/// <summary>Tiled VAE decode/encode (<see cref="VaeTiling"/>) against the untiled VAE, and the blending weights.</summary>
public class VaeTilingTests(ITestOutputHelper output)
{
    private static AutoencoderKL TinyVae() =>
        Fixtures.LoadTinyPart(Path.Combine(Fixtures.RepoRoot, "assets", "tiny-sd15"), "vae", "diffusion_pytorch_model.safetensors",
            json => new AutoencoderKL(AutoencoderKLConfig.FromDiffusersJson(json)));

    [Fact]
    public void A_latent_that_fits_one_tile_decodes_and_encodes_exactly_as_untiled()
    {
        using var vae = TinyVae();
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var latents = torch.randn([1, 4, 16, 12], generator: new Generator(5, CPU));
        var tiling = new VaeTiling(TileLatent: 16, OverlapLatent: 4);
        Assert.True(torch.equal(vae.Decode(latents), tiling.Decode(vae, latents)).all().item<bool>());
        var image = torch.rand([1, 3, 128, 96], generator: new Generator(6, CPU)) * 2 - 1;
        Assert.True(torch.equal(vae.Encode(image).Moments, tiling.Encode(vae, image).Moments).all().item<bool>());
    }

    [Fact]
    public void Tiled_decode_and_encode_stay_close_to_untiled_everywhere()
    {
        using var vae = TinyVae();
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        // 2 x 3 tiles of 16 latent pixels, 8 of overlap.
        var latents = torch.randn([2, 4, 24, 32], generator: new Generator(7, CPU));
        var tiling = new VaeTiling(TileLatent: 16, OverlapLatent: 8);
        var whole = vae.Decode(latents);
        var tiled = tiling.Decode(vae, latents);
        Assert.Equal(whole.shape, tiled.shape);
        double range = whole.abs().max().item<float>();
        double maxError = (whole - tiled).abs().max().item<float>() / range;
        double meanError = (whole - tiled).abs().mean().item<float>() / range;
        output.WriteLine($"decode: max |tiled - untiled| = {maxError:P2} of max |untiled|, mean {meanError:P3}");
        // Each tile's GroupNorms see only the tile (as in diffusers' and A1111's tiled VAE). The tiny VAE is the worst
        // case for that: one channel per group, and each 16-latent tile is a third of the picture. Measured: max 25 %,
        // mean 1.9 % of the output's range; the stated tolerance is 30 % / 3 %.
        Assert.True(maxError < 0.30, $"decode max error {maxError:P2}");
        Assert.True(meanError < 0.03, $"decode mean error {meanError:P3}");

        var image = torch.rand([1, 3, 192, 256], generator: new Generator(8, CPU)) * 2 - 1;
        var mean = vae.Encode(image).Mean;
        var tiledMean = tiling.Encode(vae, image).Mean;
        double encodeRange = mean.abs().max().item<float>();
        double encodeError = (mean - tiledMean).abs().max().item<float>() / encodeRange;
        output.WriteLine($"encode: max |tiled - untiled| = {encodeError:P2} of max |untiled|");
        // Encoding tiles the whole encoder, its mid-block attention included (measured 14 %; stated 20 %).
        Assert.True(encodeError < 0.20, $"encode max error {encodeError:P2}");
    }

    [Theory]
    [InlineData(24, 16, 8, new long[] { 0, 8 })]
    [InlineData(40, 16, 4, new long[] { 0, 12, 24 })]
    [InlineData(16, 16, 4, new long[] { 0 })]
    [InlineData(17, 16, 4, new long[] { 0, 1 })]
    public void Tiles_start_every_stride_and_the_last_ends_flush(long length, long tile, long overlap, long[] expected)
    {
        var starts = VaeTiling.Starts(length, tile, overlap);
        Assert.Equal(expected, starts);
        Assert.Equal(length, starts[^1] + Math.Min(tile, length));
    }

    [Fact]
    public void Blend_weights_ramp_only_towards_neighbours_and_never_reach_zero()
    {
        using var scope = torch.NewDisposeScope();
        var inner = VaeTiling.Ramp(8, 8, 4, top: true, bottom: false, left: false, right: true, CPU);
        Assert.Equal(new long[] { 1, 1, 8, 8 }, inner.shape);
        Assert.True(inner.min().item<float>() > 0);
        Assert.Equal(1f, inner[0, 0, 7, 0].item<float>());          // bottom-left: borders of the picture, full weight
        Assert.Equal(0.125f, inner[0, 0, 0, 0].item<float>(), 6);   // first row: (0 + 0.5) / 4
        Assert.Equal(0.125f, inner[0, 0, 7, 7].item<float>(), 6);   // last column
        Assert.True(torch.equal(VaeTiling.Ramp(5, 5, 0, true, true, true, true, CPU), torch.ones(1, 1, 5, 5)).all().item<bool>());
    }

    [Fact]
    public void Vae_flops_equal_the_layers_the_modules_actually_run()
    {
        // Count convs and linears through forward hooks on the tiny VAE, add the attention matmuls, compare with VaeFlops.
        using var vae = TinyVae();
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        double counted = 0;
        var removers = new List<Action>();
        foreach (var (_, module) in vae.named_modules())
        {
            if (module is AdaptableConv2d conv)
            {
                var hook = conv.register_forward_hook((m, input, result) =>
                {
                    counted += 2.0 * result.numel() * conv.InChannels * conv.KernelSize * conv.KernelSize;
                    return result;
                });
                removers.Add(() => hook.remove());
            }
            else if (module is AdaptableLinear linear)
            {
                var hook = linear.register_forward_hook((m, input, result) =>
                {
                    counted += 2.0 * result.numel() / linear.OutFeatures * linear.InFeatures * linear.OutFeatures;
                    return result;
                });
                removers.Add(() => hook.remove());
            }
        }
        var config = vae.Config;
        int lh = 6, lw = 5;
        vae.Decode(torch.randn(1, 4, lh, lw));
        double attention = 2 * 2.0 * Math.Pow(lh * lw, 2) * config.Channels[^1];
        Assert.Equal(counted + attention, VaeFlops.Decode(config, 1, lh, lw), 6);
        counted = 0;
        vae.Encode(torch.randn(1, 3, 48, 40));
        Assert.Equal(counted + attention, VaeFlops.Encode(config, 1, 48, 40), 6);
        foreach (var remove in removers) remove();
    }
}
