using SkiaSharp;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class LossLogTests
{
    [Fact]
    public void Loss_csv_has_header_and_moving_average()
    {
        using var tmp = Fixtures.TempDir();
        var log = LossLog.Open(tmp.File("loss.csv"), window: 2);
        log.Append(1, 0, 1.0, 1e-4, 0.5);
        log.Append(2, 0, 3.0, 1e-4, 1.0);
        var r = log.Append(3, 1, 5.0, 5e-5, 1.5);
        Assert.Equal(4.0, r.SmoothedLoss);
        var lines = File.ReadAllLines(tmp.File("loss.csv"));
        Assert.Equal("step,epoch,loss,smoothed_loss,lr,seconds", lines[0]);
        Assert.Equal("2,0,3,2,0.0001,1.000", lines[2]);
        Assert.Equal(3, LossLog.Read(tmp.File("loss.csv")).Count);
    }

    [Fact]
    public void Resume_drops_rows_past_the_resumed_step_and_continues_the_average()
    {
        using var tmp = Fixtures.TempDir();
        var path = tmp.File("loss.csv");
        var log = LossLog.Open(path, window: 3);
        for (int s = 1; s <= 6; s++) log.Append(s, 0, s, 1e-4, s);
        File.AppendAllText(path, "7,0,0.5,0.5,1e-4"); // torn last line from a crash

        var resumed = LossLog.Open(path, resumeFromStep: 4, window: 3);
        Assert.Equal([1, 2, 3, 4], resumed.Rows.Select(r => r.Step));
        var next = resumed.Append(5, 1, 8.0, 1e-4, 9);
        Assert.Equal((3 + 4 + 8) / 3.0, next.SmoothedLoss, 9);
        Assert.Equal([1, 2, 3, 4, 5], LossLog.Read(path).Select(r => r.Step));

        var fresh = LossLog.Open(path);
        Assert.Empty(fresh.Rows);
        Assert.Single(File.ReadAllLines(path));
    }

    [Fact]
    public void Loss_png_is_a_valid_png_with_both_lines()
    {
        using var tmp = Fixtures.TempDir();
        var log = LossLog.Open(tmp.File("loss.csv"), window: 10);
        var rng = new Random(1);
        for (int s = 1; s <= 200; s++) log.Append(s, s / 50, 0.2 * Math.Exp(-s / 80.0) + 0.05 * rng.NextDouble(), 1e-4, s);
        var png = tmp.File("loss.png");
        log.RenderPlot(png);
        var bytes = File.ReadAllBytes(png);
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47 }, bytes[..4]);
        using var bmp = SKBitmap.Decode(png);
        Assert.Equal((900, 500), (bmp.Width, bmp.Height));
        // Both series colours appear somewhere in the plot.
        bool raw = false, smooth = false;
        for (int y = 0; y < bmp.Height; y += 1)
            for (int x = 0; x < bmp.Width; x += 1)
            {
                var c = bmp.GetPixel(x, y);
                raw |= c.Red == 120 && c.Green == 170 && c.Blue == 220;
                smooth |= c.Red == 214 && c.Green == 96 && c.Blue == 24;
            }
        Assert.True(raw && smooth);

        if (Environment.GetEnvironmentVariable("SDLORA_KEEP_PLOT") is { } keep) File.Copy(png, keep, true);
        LossPlot.Render([], tmp.File("empty.png"));
        Assert.True(new FileInfo(tmp.File("empty.png")).Length > 0);
    }

    [Theory]
    [InlineData(0.0, 1.0, 6, 0.0, 1.0, 0.2)]
    [InlineData(0.12, 0.31, 6, 0.1, 0.35, 0.05)]
    [InlineData(1, 1000, 8, 0, 1000, 200)]
    public void Nice_ticks_cover_the_range_with_round_steps(double min, double max, int count, double first, double last, double step)
    {
        var t = LossPlot.NiceTicks(min, max, count);
        Assert.Equal(first, t[0], 9);
        Assert.Equal(last, t[^1], 9);
        Assert.Equal(step, t[1] - t[0], 9);
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
