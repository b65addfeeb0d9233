using System.Text.Json;
using SdLora.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Captioning;

/// <summary>
/// BLIP's image preprocessing (<c>BlipImageProcessor</c>, and the same numbers as kohya's torchvision path):
/// Pillow bicubic resize to the square input size (aspect ignored, no crop), <c>x = float32(u8 / 255)</c>,
/// <c>(x - mean) / std</c> per channel in float32, NCHW RGB.
/// </summary>
public sealed record BlipProcessor(int Width, int Height, double RescaleFactor, float[] Mean, float[] Std)
{
    /// <summary>OpenAI CLIP statistics, what every BLIP checkpoint uses.</summary>
    public static readonly float[] ClipMean = [0.48145466f, 0.4578275f, 0.40821073f];
    public static readonly float[] ClipStd = [0.26862954f, 0.26130258f, 0.27577711f];

    public static BlipProcessor ForSize(int size) => new(size, size, 1.0 / 255.0, ClipMean, ClipStd);

    /// <summary>Reads <c>preprocessor_config.json</c>; <c>size</c> may be <c>{"height","width"}</c>, <c>{"shortest_edge"}</c> or a number (older files).</summary>
    public static BlipProcessor FromJsonFile(string path, int defaultSize)
    {
        if (!File.Exists(path)) return ForSize(defaultSize);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            var root = doc.RootElement;
            int w = defaultSize, h = defaultSize;
            if (root.TryGetProperty("size", out var size))
            {
                if (size.ValueKind == JsonValueKind.Number) w = h = size.GetInt32();
                else if (size.ValueKind == JsonValueKind.Object)
                {
                    if (size.TryGetProperty("height", out var hh)) h = hh.GetInt32();
                    if (size.TryGetProperty("width", out var ww)) w = ww.GetInt32();
                    if (size.TryGetProperty("shortest_edge", out var se)) w = h = se.GetInt32();
                }
            }
            double rescale = root.TryGetProperty("rescale_factor", out var rf) ? rf.GetDouble() : 1.0 / 255.0;
            float[] mean = root.TryGetProperty("image_mean", out var m) ? m.EnumerateArray().Select(e => (float)e.GetDouble()).ToArray() : ClipMean;
            float[] std = root.TryGetProperty("image_std", out var s) ? s.EnumerateArray().Select(e => (float)e.GetDouble()).ToArray() : ClipStd;
            if (mean.Length != 3 || std.Length != 3) throw new SdLoraException($"{path}: image_mean and image_std need 3 values (RGB); re-download the model's preprocessor_config.json");
            return new BlipProcessor(w, h, rescale, mean, std);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new SdLoraException($"{path}: unreadable preprocessor config ({e.Message}); re-download the model's preprocessor_config.json");
        }
    }

    /// <summary>One image's pixel values, CHW float32.</summary>
    public float[] PixelValues(RgbImage image)
    {
        var resized = image.Width == Width && image.Height == Height ? image : PilResize.Bicubic(image, Width, Height);
        int n = Width * Height;
        var result = new float[3 * n];
        var px = resized.Pixels;
        for (int i = 0; i < n; i++)
            for (int c = 0; c < 3; c++)
            {
                float x = (float)(px[i * 3 + c] * RescaleFactor);
                result[c * n + i] = (x - Mean[c]) / Std[c];
            }
        return result;
    }

    /// <summary>pixel_values [B,3,H,W] float32 for a batch of images.</summary>
    public Tensor Preprocess(IReadOnlyList<RgbImage> images)
    {
        int n = 3 * Width * Height;
        var all = new float[images.Count * n];
        for (int b = 0; b < images.Count; b++) PixelValues(images[b]).CopyTo(all, b * n);
        return torch.tensor(all, [images.Count, 3, Height, Width]);
    }
}
