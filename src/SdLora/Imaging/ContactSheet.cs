using System.Reflection;
using SkiaSharp;

namespace SdLora.Imaging;

/// <summary>One labelled row of a <see cref="ContactSheet"/>; <see cref="Captions"/> (optional) go under each picture.</summary>
public sealed record ContactSheetRow(string Label, IReadOnlyList<RgbImage> Images, IReadOnlyList<string>? Captions = null);

/// <summary>
/// Pictures in labelled rows on one image (a title on top, each row's label on the left, small captions under the
/// pictures), pictures enlarged with nearest-neighbour sampling so small images stay sharp.
/// </summary>
public static class ContactSheet
{
    private static readonly Lazy<SKTypeface> Font = new(() =>
    {
        const string name = "SdLora.Training.DejaVuSans-Latin1.ttf";
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"embedded resource {name} missing from the build");
        return SKTypeface.FromStream(stream) ?? throw new InvalidOperationException($"embedded font {name} could not be read");
    });

    /// <param name="cell">Side of each picture on the sheet, in pixels.</param>
    public static RgbImage Render(string title, IReadOnlyList<ContactSheetRow> rows, int cell = 128, int labelWidth = 250)
    {
        const int pad = 8, captionHeight = 16, titleSize = 18;
        int columns = Math.Max(1, rows.Max(r => r.Images.Count));
        bool captions = rows.Any(r => r.Captions is { Count: > 0 });
        int rowHeight = cell + pad + (captions ? captionHeight : 0);
        int width = labelWidth + columns * (cell + pad) + pad;
        using var titleFont = new SKFont(Font.Value, titleSize);
        // A long title wraps instead of running off the sheet.
        int titleHeight = 14 + Wrap(title, width - 2 * pad, titleFont).Count * (titleSize + 4);
        int height = titleHeight + rows.Count * rowHeight + pad;

        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        using (var canvas = new SKCanvas(bitmap))
        {
            canvas.Clear(SKColors.White);
            using var labelFont = new SKFont(Font.Value, 14);
            using var captionFont = new SKFont(Font.Value, 11);
            using var ink = new SKPaint { Color = new SKColor(30, 30, 30), IsAntialias = true };
            using var grey = new SKPaint { Color = new SKColor(90, 90, 90), IsAntialias = true };
            DrawWrapped(canvas, title, pad, 24, width - 2 * pad, titleFont, ink);
            for (int r = 0; r < rows.Count; r++)
            {
                int top = titleHeight + r * rowHeight;
                DrawWrapped(canvas, rows[r].Label, pad, top + 16, labelWidth - 2 * pad, labelFont, ink);
                for (int c = 0; c < rows[r].Images.Count; c++)
                {
                    int left = labelWidth + c * (cell + pad);
                    using var img = ToBitmap(rows[r].Images[c]);
                    using var image = SKImage.FromBitmap(img);
                    canvas.DrawImage(image, new SKRect(left, top, left + cell, top + cell), new SKSamplingOptions(SKFilterMode.Nearest));
                    if (rows[r].Captions is { } caps && c < caps.Count)
                        canvas.DrawText(caps[c], left, top + cell + 12, captionFont, grey);
                }
            }
        }
        var px = bitmap.GetPixelSpan();
        var rgb = new byte[width * height * 3];
        for (int i = 0, j = 0; i < width * height; i++, j += 4)
        {
            rgb[i * 3] = px[j];
            rgb[i * 3 + 1] = px[j + 1];
            rgb[i * 3 + 2] = px[j + 2];
        }
        return new RgbImage(width, height, rgb);
    }

    private static SKBitmap ToBitmap(RgbImage image)
    {
        var bmp = new SKBitmap(new SKImageInfo(image.Width, image.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        var dst = new byte[image.Width * image.Height * 4];
        for (int i = 0; i < image.Width * image.Height; i++)
        {
            dst[i * 4] = image.Pixels[i * 3];
            dst[i * 4 + 1] = image.Pixels[i * 3 + 1];
            dst[i * 4 + 2] = image.Pixels[i * 3 + 2];
            dst[i * 4 + 3] = 255;
        }
        System.Runtime.InteropServices.Marshal.Copy(dst, 0, bmp.GetPixels(), dst.Length);
        return bmp;
    }

    // Word-wraps text (a row label, the title) into its column, a line every font size + 4 pixels.
    private static void DrawWrapped(SKCanvas canvas, string text, float x, float y, float maxWidth, SKFont font, SKPaint paint)
    {
        foreach (var line in Wrap(text, maxWidth, font))
        {
            canvas.DrawText(line, x, y, font, paint);
            y += font.Size + 4;
        }
    }

    /// <summary>Splits <paramref name="text"/> at spaces into lines no wider than <paramref name="maxWidth"/> (a longer single word stays whole).</summary>
    internal static List<string> Wrap(string text, float maxWidth, SKFont font)
    {
        var lines = new List<string>();
        var line = "";
        foreach (var word in text.Split(' '))
        {
            var candidate = line.Length == 0 ? word : line + " " + word;
            if (line.Length > 0 && font.MeasureText(candidate) > maxWidth)
            {
                lines.Add(line);
                line = word;
            }
            else line = candidate;
        }
        if (line.Length > 0) lines.Add(line);
        return lines;
    }
}
