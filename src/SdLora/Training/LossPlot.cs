using System.Reflection;
using SkiaSharp;
using SdLora.IO;
using SP = ScottPlot;

namespace SdLora.Training;

/// <summary>
/// Draws <c>loss.png</c> with ScottPlot: the raw loss per step and its <see cref="LossEma"/> smoothing, with a title,
/// labelled axes and a legend. Text uses a font shipped inside the library, so the labels appear on machines that have
/// no fonts installed (SkiaSharp's Linux build used here does not ask fontconfig).
/// </summary>
public static class LossPlot
{
    public const int Width = 900, Height = 500;
    public static readonly SKColor RawColor = new(120, 170, 220), SmoothedColor = new(214, 96, 24);

    private static readonly Lazy<SKTypeface> Font = new(LoadFont);

    /// <summary>
    /// Renders the plot and writes it atomically to <paramref name="pngPath"/>. The smoothed line is recomputed from
    /// the raw losses with the <see cref="LossEma"/> of weight <paramref name="smoothing"/> (the one definition the
    /// log and the progress display use). Non-finite losses are left out; an empty list gives empty axes.
    /// </summary>
    public static void Render(IReadOnlyList<LossRow> rows, string pngPath, string title = "training loss", double smoothing = LossEma.DefaultWeight)
    {
        var png = RenderPng(rows, title, smoothing);
        AtomicFile.WriteAllBytes(pngPath, png);
    }

    /// <summary>The PNG bytes of the plot (<see cref="Width"/> x <see cref="Height"/>).</summary>
    public static byte[] RenderPng(IReadOnlyList<LossRow> rows, string title = "training loss", double smoothing = LossEma.DefaultWeight)
    {
        var (steps, raw, smoothed) = Series(rows, smoothing);
        var plot = new SP.Plot();
        try
        {
            plot.FigureBackground.Color = SP.Colors.White;
            plot.DataBackground.Color = SP.Colors.White;
            plot.Grid.MajorLineColor = new SP.Color(225, 225, 225);

            var rawLine = plot.Add.ScatterLine(steps, raw, ToColor(RawColor));
            rawLine.LineWidth = 1.2f;
            var smoothLine = plot.Add.ScatterLine(steps, smoothed, ToColor(SmoothedColor));
            smoothLine.LineWidth = 2.4f;
            if (steps.Length == 1) rawLine.MarkerSize = smoothLine.MarkerSize = 6; // one step: a dot, not an invisible line

            var typeface = Font.Value;
            plot.Axes.Title.Label.Text = title;
            plot.Axes.Title.Label.FontSize = 16;
            plot.Axes.Bottom.Label.Text = "step";
            plot.Axes.Left.Label.Text = "loss";
            foreach (var label in new[] { plot.Axes.Title.Label, plot.Axes.Bottom.Label, plot.Axes.Left.Label, plot.Axes.Bottom.TickLabelStyle, plot.Axes.Left.TickLabelStyle })
            {
                label.Font = typeface;
                label.Bold = false;
            }

            plot.Legend.IsVisible = true;
            plot.Legend.Alignment = SP.Alignment.UpperRight;
            plot.Legend.DisplayPlottableLegendItems = false;
            plot.Legend.ManualItems.Add(LegendEntry("loss", RawColor, 2, typeface));
            plot.Legend.ManualItems.Add(LegendEntry($"smoothed (EMA {smoothing.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)})", SmoothedColor, 3, typeface));

            if (steps.Length == 0) plot.Axes.SetLimits(0, 1, 0, 1);
            else plot.Axes.AutoScale();
            return plot.GetImageBytes(Width, Height, SP.ImageFormat.Png);
        }
        finally
        {
            plot.Dispose();
        }
    }

    /// <summary>The plotted series: steps, raw losses and their <see cref="LossEma"/> (finite losses only).</summary>
    public static (double[] Steps, double[] Raw, double[] Smoothed) Series(IReadOnlyList<LossRow> rows, double smoothing = LossEma.DefaultWeight)
    {
        var finite = rows.Where(r => double.IsFinite(r.Loss)).ToArray();
        var raw = finite.Select(r => r.Loss).ToArray();
        return (finite.Select(r => (double)r.Step).ToArray(), raw, LossEma.Smooth(raw, smoothing));
    }

    private static SP.LegendItem LegendEntry(string text, SKColor color, float width, SKTypeface typeface)
    {
        var item = new SP.LegendItem { LabelText = text, LineColor = ToColor(color), LineWidth = width };
        item.LabelStyle.Font = typeface;
        return item;
    }

    private static SP.Color ToColor(SKColor c) => new(c.Red, c.Green, c.Blue);

    private static SKTypeface LoadFont()
    {
        const string name = "SdLora.Training.DejaVuSans-Latin1.ttf";
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"embedded resource {name} missing from the build");
        return SKTypeface.FromStream(stream) ?? throw new InvalidOperationException($"embedded font {name} could not be read");
    }
}
