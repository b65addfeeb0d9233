using SkiaSharp;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class LossLogTests
{
    [Fact]
    public void Loss_ema_is_tensorboards_debiased_exponential_moving_average()
    {
        // w = 0.5 by hand: biased 0.5, 1.75, 3.375; divided by 1 - 0.5^n = 0.5, 0.75, 0.875.
        Assert.Equal([1.0, 1.75 / 0.75, 3.375 / 0.875], LossEma.Smooth([1.0, 3.0, 5.0], 0.5), new ToleranceComparer(1e-15));

        // Default weight: the closed form sum_i w^(n-i) (1-w) x_i / (1 - w^n) at every step.
        var rng = new Random(5);
        var losses = Enumerable.Range(0, 300).Select(_ => 0.05 + 0.2 * rng.NextDouble()).ToArray();
        var smoothed = LossEma.Smooth(losses);
        const double w = LossEma.DefaultWeight;
        for (int n = 1; n <= losses.Length; n++)
        {
            double sum = 0;
            for (int i = 1; i <= n; i++) sum += Math.Pow(w, n - i) * (1 - w) * losses[i - 1];
            double expected = sum / (1 - Math.Pow(w, n));
            Assert.True(Math.Abs(smoothed[n - 1] - expected) <= 1e-12 * expected, $"step {n}: {smoothed[n - 1]} vs {expected}");
        }

        // A constant loss smooths to itself from the first step (the debiasing), and a NaN neither shows nor sticks.
        Assert.All(LossEma.Smooth(Enumerable.Repeat(0.125, 20)), v => Assert.Equal(0.125, v, 12));
        var withNaN = LossEma.Smooth([0.2, double.NaN, 0.2], 0.9);
        Assert.True(double.IsNaN(withNaN[1]));
        Assert.Equal(0.2, withNaN[2], 12);
        Assert.Throws<ArgumentOutOfRangeException>(() => new LossEma(1.0));
    }

    [Fact]
    public void Smoothed_loss_follows_a_falling_loss_where_a_running_mean_lags()
    {
        // Loss falling linearly from 1 to 0 over 1000 steps: a mean of all steps would end at 0.5.
        var losses = Enumerable.Range(0, 1000).Select(i => 1 - i / 999.0).ToArray();
        var last = LossEma.Smooth(losses)[^1];
        Assert.InRange(last, 0, 0.03); // the EMA lags by its mean age (24 steps = 0.024 here)
    }

    [Fact]
    public void Loss_csv_has_header_and_the_ema()
    {
        using var tmp = Fixtures.TempDir();
        var log = LossLog.Open(tmp.File("loss.csv"), smoothing: 0.5);
        log.Append(1, 0, 1.0, 1e-4, 0.5);
        log.Append(2, 0, 3.0, 1e-4, 1.0);
        var r = log.Append(3, 1, 5.0, 5e-5, 1.5);
        Assert.Equal(3.375 / 0.875, r.SmoothedLoss, 12);
        var lines = File.ReadAllLines(tmp.File("loss.csv"));
        Assert.Equal("step,epoch,loss,smoothed_loss,lr,seconds", lines[0]);
        Assert.Equal("2,0,3,2.33333333,0.0001,1.000", lines[2]);
        Assert.Equal(3, LossLog.Read(tmp.File("loss.csv")).Count);
    }

    [Fact]
    public void Resume_drops_rows_past_the_resumed_step_and_logs_what_an_uninterrupted_run_logs()
    {
        using var tmp = Fixtures.TempDir();
        var losses = new[] { 0.31, 0.17, 0.24, 0.09, 0.15, 0.12, 0.08 };

        var straight = LossLog.Open(tmp.File("straight.csv"));
        for (int s = 1; s <= 6; s++) straight.Append(s, 0, losses[s - 1], 1e-4, s);

        var path = tmp.File("loss.csv");
        var log = LossLog.Open(path);
        for (int s = 1; s <= 6; s++) log.Append(s, 0, s == 5 ? 9.0 : losses[s - 1], 1e-4, s); // step 5 will be redone
        File.AppendAllText(path, "7,0,0.5,0.5,1e-4"); // torn last line from a crash

        var resumed = LossLog.Open(path, resumeFromStep: 4);
        Assert.Equal([1, 2, 3, 4], resumed.Rows.Select(r => r.Step));
        resumed.Append(5, 1, losses[4], 1e-4, 9);
        resumed.Append(6, 1, losses[5], 1e-4, 10);
        Assert.Equal(straight.Rows.Select(r => r.SmoothedLoss), resumed.Rows.Select(r => r.SmoothedLoss));
        Assert.Equal(straight.Rows.Select(r => r.SmoothedLoss), LossLog.Read(path).Select(r => r.SmoothedLoss), new ToleranceComparer(1e-8));
        Assert.Equal([1, 2, 3, 4, 5, 6], LossLog.Read(path).Select(r => r.Step));

        var fresh = LossLog.Open(path);
        Assert.Empty(fresh.Rows);
        Assert.Single(File.ReadAllLines(path));
    }

    [Fact]
    public void Resume_recomputes_the_smoothing_of_a_log_written_with_another_definition()
    {
        using var tmp = Fixtures.TempDir();
        var path = tmp.File("loss.csv");
        // A loss.csv from an older sdlora whose smoothed column was a window mean.
        File.WriteAllText(path, "step,epoch,loss,smoothed_loss,lr,seconds\n1,0,0.4,0.4,0.0001,1.000\n2,0,0.2,0.3,0.0001,2.000\n");
        var log = LossLog.Open(path, resumeFromStep: 2);
        Assert.Equal(LossEma.Smooth([0.4, 0.2]), log.Rows.Select(r => r.SmoothedLoss));
    }

    [Fact]
    public void Loss_png_decodes_at_its_size_with_both_lines_and_labels()
    {
        using var tmp = Fixtures.TempDir();
        var log = LossLog.Open(tmp.File("loss.csv"));
        var rng = new Random(1);
        for (int s = 1; s <= 200; s++) log.Append(s, s / 50, 0.2 * Math.Exp(-s / 80.0) + 0.05 * rng.NextDouble(), 1e-4, s);
        var png = tmp.File("loss.png");
        log.RenderPlot(png);
        var bytes = File.ReadAllBytes(png);
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47 }, bytes[..4]);
        using var bmp = SKBitmap.Decode(png);
        Assert.NotNull(bmp);
        Assert.Equal((LossPlot.Width, LossPlot.Height), (bmp.Width, bmp.Height));

        bool raw = false, smooth = false;
        for (int y = 0; y < bmp.Height; y++)
            for (int x = 0; x < bmp.Width; x++)
            {
                var c = bmp.GetPixel(x, y);
                raw |= Near(c, LossPlot.RawColor);
                smooth |= Near(c, LossPlot.SmoothedColor);
            }
        Assert.True(raw, "no pixel of the raw-loss colour");
        Assert.True(smooth, "no pixel of the smoothed-loss colour");

        // Text is drawn with the embedded font: dark glyph pixels in the title band above the plot and left of the
        // y axis (the rotated "loss" label), both places where only text is drawn.
        Assert.True(DarkPixels(bmp, 300, 600, 0, 30) > 30, "no title text");
        Assert.True(DarkPixels(bmp, 0, 25, 150, 350) > 15, "no y-axis label");

        if (Environment.GetEnvironmentVariable("SDLORA_KEEP_PLOT") is { } keep) File.Copy(png, keep, true);
    }

    [Fact]
    public void Plotted_smoothed_line_is_the_ema_of_the_finite_losses()
    {
        var rows = new List<LossRow>();
        var ema = new LossEma(0.9);
        var rng = new Random(2);
        for (int s = 1; s <= 50; s++)
        {
            double loss = s == 20 ? double.NaN : rng.NextDouble();
            rows.Add(new LossRow(s, 0, loss, ema.Add(loss), 1e-4, s));
        }
        var (steps, raw, smoothed) = LossPlot.Series(rows, 0.9);
        var finite = rows.Where(r => double.IsFinite(r.Loss)).ToList();
        Assert.Equal(finite.Select(r => (double)r.Step), steps);
        Assert.Equal(finite.Select(r => r.Loss), raw);
        Assert.Equal(LossEma.Smooth(raw, 0.9), smoothed);
        Assert.Equal(finite.Select(r => r.SmoothedLoss), smoothed); // the same values the log and progress show
    }

    [Fact]
    public void Empty_and_single_step_logs_still_give_a_png()
    {
        using var tmp = Fixtures.TempDir();
        LossPlot.Render([], tmp.File("empty.png"));
        LossPlot.Render([new LossRow(1, 0, 0.1, 0.1, 1e-4, 1)], tmp.File("one.png"));
        foreach (var f in new[] { "empty.png", "one.png" })
        {
            using var bmp = SKBitmap.Decode(tmp.File(f));
            Assert.Equal((LossPlot.Width, LossPlot.Height), (bmp.Width, bmp.Height));
        }
    }

    private static bool Near(SKColor c, SKColor target) =>
        Math.Abs(c.Red - target.Red) <= 8 && Math.Abs(c.Green - target.Green) <= 8 && Math.Abs(c.Blue - target.Blue) <= 8;

    private static int DarkPixels(SKBitmap bmp, int x0, int x1, int y0, int y1)
    {
        int n = 0;
        for (int y = y0; y < y1; y++)
            for (int x = x0; x < x1; x++)
            {
                var c = bmp.GetPixel(x, y);
                if (c.Red < 110 && c.Green < 110 && c.Blue < 110) n++;
            }
        return n;
    }

    private sealed class ToleranceComparer(double tolerance) : IEqualityComparer<double>
    {
        public bool Equals(double a, double b) => Math.Abs(a - b) <= tolerance * Math.Max(1, Math.Abs(b));
        public int GetHashCode(double v) => 0;
    }
}

public class TensorBoardLogTests
{
    [Fact]
    public void TensorBoard_writer_creates_an_events_file()
    {
        using var tmp = Fixtures.TempDir();
        using (var tb = new TensorBoardLog(tmp.File("logs")))
            for (int s = 1; s <= 3; s++) tb.Write(new LossRow(s, 0, 0.1 * s, 0.1, 1e-4, s));
        var files = Directory.GetFiles(tmp.File("logs"), "events.out.tfevents*", SearchOption.AllDirectories);
        var f = Assert.Single(files);
        Assert.True(new FileInfo(f).Length > 50, $"events file is {new FileInfo(f).Length} bytes");
    }
}
