// Why we keep this: BLIP's fixtures need Pillow's bicubic resize bit for bit, and SkiaSharp's resize is not Pillow's (docs/libraries.md).
namespace SdLora.Imaging;

/// <summary>
/// Pillow's 8-bit bicubic resize, bit for bit: separable (horizontal pass first, the intermediate rounded to
/// uint8), cubic kernel a = -0.5 widened by the scale when shrinking (antialiasing), weights in 22-bit fixed
/// point. Hugging Face image processors and torchvision's PIL path resize with exactly this, so preprocessing
/// matches the reference only with this resizer.
/// </summary>
public static class PilResize
{
    private const int PrecisionBits = 32 - 8 - 2;

    public static RgbImage Bicubic(RgbImage image, int width, int height)
    {
        if (width <= 0 || height <= 0) throw new ArgumentOutOfRangeException(nameof(width), "target size must be positive");
        var pixels = image.Pixels;
        int w = image.Width, h = image.Height;
        // Pillow skips a pass whose size does not change (the kernel would be the identity anyway).
        if (width != w)
        {
            pixels = ResampleHorizontal(pixels, w, h, width);
            w = width;
        }
        if (height != h)
        {
            pixels = ResampleVertical(pixels, w, h, height);
            h = height;
        }
        return new RgbImage(w, h, pixels == image.Pixels ? (byte[])pixels.Clone() : pixels);
    }

    private static double Cubic(double x)
    {
        const double a = -0.5;
        x = Math.Abs(x);
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
        if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
        return 0.0;
    }

    /// <summary>Per output index: first input index and the fixed-point weights.</summary>
    private static (int[] Start, int[][] Weights) Coefficients(int inSize, int outSize)
    {
        double scale = (double)inSize / outSize;
        double filterScale = Math.Max(scale, 1.0);
        double support = 2.0 * filterScale;
        var start = new int[outSize];
        var weights = new int[outSize][];
        for (int i = 0; i < outSize; i++)
        {
            double center = (i + 0.5) * scale;
            int xmin = Math.Max((int)(center - support + 0.5), 0);
            int xmax = Math.Min((int)(center + support + 0.5), inSize);
            var w = new double[xmax - xmin];
            double sum = 0;
            for (int j = 0; j < w.Length; j++)
            {
                w[j] = Cubic((j + xmin - center + 0.5) / filterScale);
                sum += w[j];
            }
            var k = new int[w.Length];
            for (int j = 0; j < w.Length; j++)
            {
                double norm = sum != 0 ? w[j] / sum : w[j];
                k[j] = (int)(norm * (1 << PrecisionBits) + (norm < 0 ? -0.5 : 0.5));
            }
            start[i] = xmin;
            weights[i] = k;
        }
        return (start, weights);
    }

    private static byte Clip8(long acc)
    {
        long v = acc >> PrecisionBits; // arithmetic shift: floor
        return (byte)Math.Clamp(v, 0, 255);
    }

    private static byte[] ResampleHorizontal(byte[] src, int w, int h, int outW)
    {
        var (start, weights) = Coefficients(w, outW);
        var dst = new byte[outW * h * 3];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < outW; x++)
            {
                var k = weights[x];
                for (int c = 0; c < 3; c++)
                {
                    long acc = 1L << (PrecisionBits - 1);
                    int baseIndex = (y * w + start[x]) * 3 + c;
                    for (int j = 0; j < k.Length; j++) acc += src[baseIndex + j * 3] * (long)k[j];
                    dst[(y * outW + x) * 3 + c] = Clip8(acc);
                }
            }
        return dst;
    }

    private static byte[] ResampleVertical(byte[] src, int w, int h, int outH)
    {
        var (start, weights) = Coefficients(h, outH);
        var dst = new byte[w * outH * 3];
        int stride = w * 3;
        for (int y = 0; y < outH; y++)
        {
            var k = weights[y];
            for (int i = 0; i < stride; i++)
            {
                long acc = 1L << (PrecisionBits - 1);
                int baseIndex = start[y] * stride + i;
                for (int j = 0; j < k.Length; j++) acc += src[baseIndex + j * stride] * (long)k[j];
                dst[y * stride + i] = Clip8(acc);
            }
        }
        return dst;
    }
}
