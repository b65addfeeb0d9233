using SdLora.Models;

namespace SdLora.Benchmarks;

/// <summary>
/// Multiply-add work (2 FLOPs per MAC) of the VAE decoder and encoder, counted analytically from the config: convs,
/// the mid-block attention's projections and its two matmuls. Norms, activations and additions are left out.
/// </summary>
public static class VaeFlops
{
    private static double Conv(double b, double cin, double cout, double k, double h, double w) => 2 * b * h * w * cin * cout * k * k;

    private static double Resnet(double b, double cin, double cout, double h, double w) =>
        Conv(b, cin, cout, 3, h, w) + Conv(b, cout, cout, 3, h, w) + (cin != cout ? Conv(b, cin, cout, 1, h, w) : 0);

    private static double MidBlock(double b, double c, double h, double w)
    {
        double n = h * w;
        return 2 * Resnet(b, c, c, h, w) + 4 * 2 * b * n * c * c + 2 * 2 * b * n * n * c;
    }

    /// <summary>One decode of <paramref name="batch"/> latents of <paramref name="latentHeight"/> x <paramref name="latentWidth"/>.</summary>
    public static double Decode(AutoencoderKLConfig config, int batch, int latentHeight, int latentWidth)
    {
        var reversed = config.Channels.Reverse().ToArray();
        double b = batch, h = latentHeight, w = latentWidth;
        double total = Conv(b, config.LatentChannels, config.LatentChannels, 1, h, w); // post_quant_conv
        total += Conv(b, config.LatentChannels, reversed[0], 3, h, w);
        total += MidBlock(b, reversed[0], h, w);
        int output = reversed[0];
        for (int i = 0; i < reversed.Length; i++)
        {
            int prev = output;
            output = reversed[i];
            for (int j = 0; j < config.LayersPerBlock + 1; j++) total += Resnet(b, j == 0 ? prev : output, output, h, w);
            if (i < reversed.Length - 1)
            {
                h *= 2; w *= 2;
                total += Conv(b, output, output, 3, h, w);
            }
        }
        return total + Conv(b, reversed[^1], config.OutChannels, 3, h, w);
    }

    /// <summary>One encode of <paramref name="batch"/> images of <paramref name="height"/> x <paramref name="width"/> pixels.</summary>
    public static double Encode(AutoencoderKLConfig config, int batch, int height, int width)
    {
        var ch = config.Channels;
        double b = batch, h = height, w = width;
        double total = Conv(b, config.InChannels, ch[0], 3, h, w);
        int output = ch[0];
        for (int i = 0; i < ch.Length; i++)
        {
            int input = output;
            output = ch[i];
            for (int j = 0; j < config.LayersPerBlock; j++) total += Resnet(b, j == 0 ? input : output, output, h, w);
            if (i < ch.Length - 1)
            {
                h = Math.Floor((h + 1 - 3) / 2) + 1; w = Math.Floor((w + 1 - 3) / 2) + 1;
                total += Conv(b, output, output, 3, h, w);
            }
        }
        total += MidBlock(b, ch[^1], h, w);
        total += Conv(b, ch[^1], 2 * config.LatentChannels, 3, h, w);
        return total + Conv(b, 2 * config.LatentChannels, 2 * config.LatentChannels, 1, h, w);
    }
}
