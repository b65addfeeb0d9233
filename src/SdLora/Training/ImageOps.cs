using SkiaSharp;
using SdLora.Imaging;

namespace SdLora.Training;

/// <summary>Resize / crop / flip / PNG encode for <see cref="RgbImage"/>, as the data pipeline needs them.</summary>
public static class ImageOps
{
    /// <summary>
    /// Good-quality resize: area averaging when shrinking (like OpenCV's INTER_AREA, which kohya uses),
    /// Mitchell bicubic when enlarging.
    /// </summary>
    public static RgbImage Resize(RgbImage src, int width, int height)
    {
        if (width == src.Width && height == src.Height) return src;
        if (width <= src.Width && height <= src.Height) return AreaResize(src, width, height);
        using var bmp = ToBitmap(src);
        using var resized = bmp.Resize(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul), new SKSamplingOptions(SKCubicResampler.Mitchell))
            ?? throw new InvalidOperationException("SkiaSharp resize failed");
        return FromBitmap(resized);
    }

    // Separable box filter with fractional coverage: each output pixel averages exactly the source area it covers.
    private static RgbImage AreaResize(RgbImage src, int w, int h)
    {
        var horiz = new float[src.Height * w * 3];
        var (xi, xw) = Coverage(src.Width, w);
        for (int y = 0; y < src.Height; y++)
            for (int x = 0; x < w; x++)
            {
                float r = 0, g = 0, b = 0, total = 0;
                for (int k = 0; k < xi[x].Length; k++)
                {
                    int s = (y * src.Width + xi[x][k]) * 3; float wt = xw[x][k];
                    r += src.Pixels[s] * wt; g += src.Pixels[s + 1] * wt; b += src.Pixels[s + 2] * wt; total += wt;
                }
                int d = (y * w + x) * 3;
                horiz[d] = r / total; horiz[d + 1] = g / total; horiz[d + 2] = b / total;
            }
        var outPix = new byte[w * h * 3];
        var (yi, yw) = Coverage(src.Height, h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++)
                {
                    float acc = 0, total = 0;
                    for (int k = 0; k < yi[y].Length; k++) { acc += horiz[(yi[y][k] * w + x) * 3 + c] * yw[y][k]; total += yw[y][k]; }
                    outPix[(y * w + x) * 3 + c] = (byte)Math.Clamp((int)MathF.Round(acc / total), 0, 255);
                }
        return new RgbImage(w, h, outPix);
    }

    private static (int[][] Index, float[][] Weight) Coverage(int srcLen, int dstLen)
    {
        double scale = (double)srcLen / dstLen;
        var idx = new int[dstLen][]; var wts = new float[dstLen][];
        for (int o = 0; o < dstLen; o++)
        {
            double start = o * scale, end = (o + 1) * scale;
            int first = (int)Math.Floor(start), last = Math.Min(srcLen - 1, (int)Math.Ceiling(end) - 1);
            var i = new List<int>(); var wt = new List<float>();
            for (int s = first; s <= last; s++)
            {
                double cover = Math.Min(end, s + 1) - Math.Max(start, s);
                if (cover > 1e-9) { i.Add(s); wt.Add((float)cover); }
            }
            idx[o] = i.ToArray(); wts[o] = wt.ToArray();
        }
        return (idx, wts);
    }

    public static RgbImage Crop(RgbImage src, int x, int y, int width, int height)
    {
        if (x < 0 || y < 0 || x + width > src.Width || y + height > src.Height) throw new ArgumentOutOfRangeException(nameof(x), "crop outside the image");
        if (x == 0 && y == 0 && width == src.Width && height == src.Height) return src;
        var dst = new byte[width * height * 3];
        for (int row = 0; row < height; row++)
            Array.Copy(src.Pixels, ((y + row) * src.Width + x) * 3, dst, row * width * 3, width * 3);
        return new RgbImage(width, height, dst);
    }

    public static RgbImage FlipHorizontal(RgbImage src)
    {
        var dst = new byte[src.Pixels.Length];
        for (int y = 0; y < src.Height; y++)
            for (int x = 0; x < src.Width; x++)
            {
                int s = (y * src.Width + x) * 3, d = (y * src.Width + (src.Width - 1 - x)) * 3;
                dst[d] = src.Pixels[s]; dst[d + 1] = src.Pixels[s + 1]; dst[d + 2] = src.Pixels[s + 2];
            }
        return new RgbImage(src.Width, src.Height, dst);
    }

    /// <summary>Writes a PNG atomically.</summary>
    public static void SavePng(RgbImage image, string path)
    {
        using var bmp = ToBitmap(image);
        using var data = bmp.Encode(SKEncodedImageFormat.Png, 100);
        IO.AtomicFile.WriteAllBytes(path, data.AsSpan());
    }

    internal static SKBitmap ToBitmap(RgbImage img)
    {
        var bmp = new SKBitmap(new SKImageInfo(img.Width, img.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        var span = bmp.GetPixelSpan();
        for (int i = 0, j = 0; i < img.Width * img.Height; i++, j += 4)
        {
            span[j] = img.Pixels[i * 3]; span[j + 1] = img.Pixels[i * 3 + 1]; span[j + 2] = img.Pixels[i * 3 + 2]; span[j + 3] = 255;
        }
        return bmp;
    }

    internal static RgbImage FromBitmap(SKBitmap bmp)
    {
        using var rgba = bmp.ColorType == SKColorType.Rgba8888 ? null : bmp.Copy(SKColorType.Rgba8888);
        var src = (rgba ?? bmp).GetPixelSpan();
        var rgb = new byte[bmp.Width * bmp.Height * 3];
        for (int i = 0, j = 0; i < bmp.Width * bmp.Height; i++, j += 4)
        {
            rgb[i * 3] = src[j]; rgb[i * 3 + 1] = src[j + 1]; rgb[i * 3 + 2] = src[j + 2];
        }
        return new RgbImage(bmp.Width, bmp.Height, rgb);
    }
}
