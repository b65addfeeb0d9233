using SdLora.Models;

namespace SdLora.Benchmarks;

/// <summary>
/// Counts the multiply-add work (2 FLOPs per MAC) of one UNet forward analytically from its config:
/// convolutions, linears and the two attention matmuls (q k^T and attn v). Norms, activations,
/// softmax and additions are left out (they are memory-bound and small).
/// </summary>
public static class UNetFlops
{
    public static double Forward(UNetConfig config, int batch, int latentHeight, int latentWidth, int contextTokens)
    {
        var ch = config.Channels;
        int layers = config.LayersPerBlock, ctxDim = config.CrossAttentionDim, tembDim = ch[0] * 4;
        double b = batch, m = contextTokens;
        double total = 0;
        double Conv(double cin, double cout, double k, double h, double w) => 2 * b * h * w * cin * cout * k * k;
        double Linear(double tokens, double cin, double cout) => 2 * b * tokens * cin * cout;
        double Resnet(double cin, double cout, double h, double w) =>
            Conv(cin, cout, 3, h, w) + Conv(cout, cout, 3, h, w) + (cin != cout ? Conv(cin, cout, 1, h, w) : 0) + 2 * b * tembDim * cout;
        double Transformer(double c, double h, double w)
        {
            double n = h * w;
            double proj = 2 * Linear(n, c, c);                                    // proj_in, proj_out
            double self = 4 * Linear(n, c, c) + 2 * (2 * b * n * n * c);          // q,k,v,out + qk^T, av
            double cross = 2 * Linear(n, c, c) + 2 * Linear(m, ctxDim, c) + 2 * (2 * b * n * m * c);
            double ff = Linear(n, c, 8 * c) + Linear(n, 4 * c, c);                // GEGLU proj, net.2
            return proj + self + cross + ff;
        }

        double hh = latentHeight, ww = latentWidth;
        total += 2 * b * (ch[0] * tembDim + tembDim * tembDim);                   // time MLP
        total += Conv(config.InChannels, ch[0], 3, hh, ww);
        var skipChannels = new List<int> { ch[0] };
        var skipSizes = new List<(double h, double w)> { (hh, ww) };
        int output = ch[0];
        for (int i = 0; i < ch.Length; i++)
        {
            int input = output;
            output = ch[i];
            bool attention = config.DownBlocks[i] == "CrossAttnDownBlock2D";
            for (int j = 0; j < layers; j++)
            {
                total += Resnet(j == 0 ? input : output, output, hh, ww);
                if (attention) total += Transformer(output, hh, ww);
                skipChannels.Add(output); skipSizes.Add((hh, ww));
            }
            if (i < ch.Length - 1)
            {
                double nh = Math.Ceiling(hh / 2), nw = Math.Ceiling(ww / 2);
                total += Conv(output, output, 3, nh, nw);
                hh = nh; ww = nw;
                skipChannels.Add(output); skipSizes.Add((hh, ww));
            }
        }
        total += 2 * Resnet(ch[^1], ch[^1], hh, ww) + Transformer(ch[^1], hh, ww);
        var reversed = ch.Reverse().ToArray();
        output = reversed[0];
        for (int i = 0; i < reversed.Length; i++)
        {
            int prev = output;
            output = reversed[i];
            bool attention = config.UpBlocks[i] == "CrossAttnUpBlock2D";
            for (int j = 0; j < layers + 1; j++)
            {
                int skip = skipChannels[^1];
                skipChannels.RemoveAt(skipChannels.Count - 1); skipSizes.RemoveAt(skipSizes.Count - 1);
                total += Resnet((j == 0 ? prev : output) + skip, output, hh, ww);
                if (attention) total += Transformer(output, hh, ww);
            }
            if (i < reversed.Length - 1)
            {
                (hh, ww) = skipSizes[^1];
                total += Conv(output, output, 3, hh, ww);
            }
        }
        total += Conv(ch[0], config.OutChannels, 3, hh, ww);
        return total;
    }
}
