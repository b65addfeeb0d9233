using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Imaging;

/// <summary>An 8-bit RGB image in row-major HWC order: the plain form every part of sdlora exchanges pictures in.</summary>
public sealed class RgbImage
{
    public int Width { get; }
    public int Height { get; }
    /// <summary>Height x Width x 3 bytes.</summary>
    public byte[] Pixels { get; }

    public RgbImage(int width, int height, byte[] pixels)
    {
        if (pixels.Length != width * height * 3) throw new ArgumentException("pixel buffer size does not match width x height x 3");
        Width = width; Height = height; Pixels = pixels;
    }

    public static readonly string[] SupportedExtensions = [".jpg", ".jpeg", ".png", ".webp", ".bmp"];

    public static bool HasImageExtension(string path) =>
        SupportedExtensions.Contains(Path.GetExtension(path).ToLowerInvariant());

    /// <summary>
    /// Decodes jpg/png/webp/bmp, applies the EXIF orientation (phone photos are often stored rotated)
    /// and flattens any alpha channel onto white.
    /// </summary>
    /// <param name="requireComplete">
    /// Refuse a file cut short (an interrupted download or copy): by default its decodable part is returned with the
    /// rest filled in, as viewers show it; training data must not contain such half-grey pictures.
    /// </param>
    public static RgbImage Load(string path, bool requireComplete = false)
    {
        if (!File.Exists(path)) throw new SdLoraException($"{path}: image not found");
        using var data = SKData.Create(path);
        using var codec = data is null ? null : SKCodec.Create(data);
        if (codec is null) throw new SdLoraException($"{path}: not a readable image (corrupt or unsupported format); use jpg, png, webp or bmp");
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        using var decoded = new SKBitmap(info);
        var result = codec.GetPixels(info, decoded.GetPixels());
        if (result != SKCodecResult.Success && result != SKCodecResult.IncompleteInput)
            throw new SdLoraException($"{path}: image could not be decoded ({result}); re-save it as jpg or png");
        if (result == SKCodecResult.IncompleteInput && requireComplete)
            throw new SdLoraException($"{path}: the file is cut short (only part of the image decodes); copy or download it again");
        using var oriented = ApplyOrientation(decoded, codec.EncodedOrigin);
        return FromBitmap(oriented);
    }

    private static SKBitmap ApplyOrientation(SKBitmap src, SKEncodedOrigin origin)
    {
        if (origin == SKEncodedOrigin.TopLeft) return src.Copy();
        bool swap = origin is SKEncodedOrigin.LeftTop or SKEncodedOrigin.RightTop or SKEncodedOrigin.RightBottom or SKEncodedOrigin.LeftBottom;
        int w = swap ? src.Height : src.Width, h = swap ? src.Width : src.Height;
        var dst = new SKBitmap(new SKImageInfo(w, h, src.ColorType, src.AlphaType));
        using var canvas = new SKCanvas(dst);
        canvas.SetMatrix(OrientationMatrix(origin, src.Width, src.Height));
        canvas.DrawBitmap(src, 0, 0);
        return dst;
    }

    // Maps the stored pixel grid onto the upright one, following the EXIF orientation tags 2..8.
    private static SKMatrix OrientationMatrix(SKEncodedOrigin origin, int w, int h) => origin switch
    {
        SKEncodedOrigin.TopRight => new SKMatrix(-1, 0, w, 0, 1, 0, 0, 0, 1),
        SKEncodedOrigin.BottomRight => new SKMatrix(-1, 0, w, 0, -1, h, 0, 0, 1),
        SKEncodedOrigin.BottomLeft => new SKMatrix(1, 0, 0, 0, -1, h, 0, 0, 1),
        SKEncodedOrigin.LeftTop => new SKMatrix(0, 1, 0, 1, 0, 0, 0, 0, 1),
        SKEncodedOrigin.RightTop => new SKMatrix(0, -1, h, 1, 0, 0, 0, 0, 1),
        SKEncodedOrigin.RightBottom => new SKMatrix(0, -1, h, -1, 0, w, 0, 0, 1),
        SKEncodedOrigin.LeftBottom => new SKMatrix(0, 1, 0, -1, 0, w, 0, 0, 1),
        _ => SKMatrix.Identity,
    };

    private static RgbImage FromBitmap(SKBitmap bmp)
    {
        int w = bmp.Width, h = bmp.Height;
        var rgba = bmp.GetPixelSpan();
        var rgb = new byte[w * h * 3];
        for (int i = 0, j = 0; i < w * h; i++, j += 4)
        {
            int a = rgba[j + 3];
            // Alpha flattened onto white, as kohya does for transparent PNGs.
            rgb[i * 3] = (byte)((rgba[j] * a + 255 * (255 - a) + 127) / 255);
            rgb[i * 3 + 1] = (byte)((rgba[j + 1] * a + 255 * (255 - a) + 127) / 255);
            rgb[i * 3 + 2] = (byte)((rgba[j + 2] * a + 255 * (255 - a) + 127) / 255);
        }
        return new RgbImage(w, h, rgb);
    }

    /// <summary>[1, 3, H, W] float tensor in [-1, 1] (the VAE's input range).</summary>
    public Tensor ToTensor()
    {
        var t = torch.tensor(Pixels, [Height, Width, 3], ScalarType.Byte);
        using var scope = torch.NewDisposeScope();
        return (t.permute(2, 0, 1).unsqueeze(0).to(ScalarType.Float32) / 127.5 - 1.0).MoveToOuterDisposeScope();
    }

    /// <summary>From a [3, H, W] or [1, 3, H, W] float tensor in [0, 1]: <c>round(clamp(x) * 255)</c>, as diffusers' numpy_to_pil does.</summary>
    public static RgbImage FromTensor01(Tensor image)
    {
        using var scope = torch.NewDisposeScope();
        var x = image.dim() == 4 ? image[0] : image;
        var u8 = (x.to(ScalarType.Float32).clamp(0, 1) * 255).round().to(ScalarType.Byte).permute(1, 2, 0).contiguous().cpu();
        return new RgbImage((int)x.shape[2], (int)x.shape[1], u8.bytes.ToArray());
    }
}
