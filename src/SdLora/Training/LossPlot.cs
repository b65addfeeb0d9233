using System.Globalization;
using SkiaSharp;
using SdLora.IO;

namespace SdLora.Training;

/// <summary>Draws <c>loss.png</c>: raw loss and smoothed loss against the step, with ticked, labelled axes.</summary>
public static class LossPlot
{
    private const int W = 900, H = 500, Left = 80, Right = 24, Top = 44, Bottom = 56;
    private static readonly SKColor RawColor = new(120, 170, 220), SmoothColor = new(214, 96, 24), AxisColor = new(40, 40, 40), GridColor = new(225, 225, 225);

    /// <summary>Renders the plot and writes it atomically to <paramref name="pngPath"/>; an empty list gives empty axes.</summary>
    public static void Render(IReadOnlyList<LossRow> rows, string pngPath, string title = "training loss")
    {
        var points = rows.Where(r => double.IsFinite(r.Loss)).ToList();
        using var surface = SKSurface.Create(new SKImageInfo(W, H, SKColorType.Rgba8888, SKAlphaType.Premul))
            ?? throw new InvalidOperationException("could not create a drawing surface");
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);

        double xMin = points.Count > 0 ? points[0].Step : 0, xMax = points.Count > 1 ? points[^1].Step : xMin + 1;
        double yMin = points.Count > 0 ? points.Min(p => Math.Min(p.Loss, p.SmoothedLoss)) : 0;
        double yMax = points.Count > 0 ? points.Max(p => Math.Max(p.Loss, p.SmoothedLoss)) : 1;
        if (yMax - yMin < 1e-12) { yMin -= 0.5 * Math.Max(Math.Abs(yMin), 1e-3); yMax += 0.5 * Math.Max(Math.Abs(yMax), 1e-3); }
        var yTicks = NiceTicks(yMin, yMax, 6);
        var xTicks = NiceTicks(xMin, xMax, 8);
        yMin = Math.Min(yMin, yTicks[0]); yMax = Math.Max(yMax, yTicks[^1]);

        float plotW = W - Left - Right, plotH = H - Top - Bottom;
        float X(double s) => Left + (float)((s - xMin) / (xMax - xMin) * plotW);
        float Y(double v) => Top + plotH - (float)((v - yMin) / (yMax - yMin) * plotH);

        using var grid = new SKPaint { Color = GridColor, StrokeWidth = 1, IsAntialias = false };
        using var axis = new SKPaint { Color = AxisColor, StrokeWidth = 1.5f, IsAntialias = true, Style = SKPaintStyle.Stroke };
        foreach (var t in yTicks)
        {
            float y = Y(t);
            canvas.DrawLine(Left, y, Left + plotW, y, grid);
            canvas.DrawLine(Left - 5, y, Left, y, axis);
            var label = Format(t, yTicks);
            StrokeFont.Draw(canvas, label, Left - 9 - StrokeFont.Measure(label, 11), y - 5.5f, 11, AxisColor);
        }
        foreach (var t in xTicks.Where(t => t >= xMin && t <= xMax))
        {
            float x = X(t);
            canvas.DrawLine(x, Top, x, Top + plotH, grid);
            canvas.DrawLine(x, Top + plotH, x, Top + plotH + 5, axis);
            var label = Format(t, xTicks);
            StrokeFont.Draw(canvas, label, x - StrokeFont.Measure(label, 11) / 2, Top + plotH + 10, 11, AxisColor);
        }
        canvas.DrawRect(Left, Top, plotW, plotH, axis);

        canvas.Save();
        canvas.ClipRect(new SKRect(Left, Top, Left + plotW, Top + plotH));
        DrawSeries(canvas, points, p => p.Loss, X, Y, RawColor, 1.2f);
        DrawSeries(canvas, points, p => p.SmoothedLoss, X, Y, SmoothColor, 2.4f);
        canvas.Restore();

        StrokeFont.Draw(canvas, title, W / 2f - StrokeFont.Measure(title, 16) / 2, 14, 16, AxisColor);
        StrokeFont.Draw(canvas, "step", Left + plotW / 2 - StrokeFont.Measure("step", 13) / 2, H - 24, 13, AxisColor);
        StrokeFont.Draw(canvas, "loss", 18, Top + plotH / 2 + StrokeFont.Measure("loss", 13) / 2, 13, AxisColor, vertical: true);
        Legend(canvas, Left + plotW - 150, Top + 12);

        using var image = surface.Snapshot();
        using var png = image.Encode(SKEncodedImageFormat.Png, 100);
        AtomicFile.WriteAllBytes(pngPath, png.AsSpan());
    }

    private static void DrawSeries(SKCanvas canvas, List<LossRow> rows, Func<LossRow, double> value, Func<double, float> x, Func<double, float> y, SKColor color, float width)
    {
        if (rows.Count == 0) return;
        using var paint = new SKPaint { Color = color, StrokeWidth = width, IsAntialias = true, Style = SKPaintStyle.Stroke, StrokeJoin = SKStrokeJoin.Round };
        using var path = new SKPath();
        path.MoveTo(x(rows[0].Step), y(value(rows[0])));
        foreach (var r in rows.Skip(1)) path.LineTo(x(r.Step), y(value(r)));
        if (rows.Count == 1) canvas.DrawCircle(x(rows[0].Step), y(value(rows[0])), width + 1, paint);
        canvas.DrawPath(path, paint);
    }

    private static void Legend(SKCanvas canvas, float x, float y)
    {
        using var box = new SKPaint { Color = new SKColor(255, 255, 255, 230), Style = SKPaintStyle.Fill };
        using var border = new SKPaint { Color = GridColor, Style = SKPaintStyle.Stroke };
        canvas.DrawRect(x, y, 138, 44, box);
        canvas.DrawRect(x, y, 138, 44, border);
        using var raw = new SKPaint { Color = RawColor, StrokeWidth = 2, IsAntialias = true };
        using var smooth = new SKPaint { Color = SmoothColor, StrokeWidth = 3, IsAntialias = true };
        canvas.DrawLine(x + 8, y + 13, x + 32, y + 13, raw);
        StrokeFont.Draw(canvas, "loss", x + 40, y + 8, 10, AxisColor);
        canvas.DrawLine(x + 8, y + 32, x + 32, y + 32, smooth);
        StrokeFont.Draw(canvas, "smoothed", x + 40, y + 27, 10, AxisColor);
    }

    /// <summary>About <paramref name="count"/> round tick values (1, 2, 5 x 10^k steps) covering [min, max].</summary>
    public static double[] NiceTicks(double min, double max, int count)
    {
        double raw = (max - min) / Math.Max(1, count - 1);
        double mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1.0, 2.0, 2.5, 5.0, 10.0 }.Select(m => m * mag).First(s => s >= raw);
        double start = Math.Floor(min / step) * step, end = Math.Ceiling(max / step) * step;
        var ticks = new List<double>();
        for (double t = start; t <= end + step * 1e-9; t += step) ticks.Add(Math.Round(t / step) * step);
        return ticks.ToArray();
    }

    private static string Format(double v, double[] ticks)
    {
        double step = ticks.Length > 1 ? ticks[1] - ticks[0] : 1;
        int decimals = 0;
        while (decimals < 6 && Math.Abs(step * Math.Pow(10, decimals) - Math.Round(step * Math.Pow(10, decimals))) > 1e-6) decimals++;
        if (Math.Abs(v) >= 1e5 || (v != 0 && Math.Abs(v) < 1e-4)) return v.ToString("0.0e+0", CultureInfo.InvariantCulture);
        return v.ToString("F" + decimals, CultureInfo.InvariantCulture);
    }
}
