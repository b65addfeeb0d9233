using System.Globalization;
using System.Text;
using SdLora.IO;

namespace SdLora.Training;

/// <summary>One optimizer step in <c>loss.csv</c>. <see cref="Seconds"/> is wall time since the run began (continued across resumes).</summary>
public sealed record LossRow(int Step, int Epoch, double Loss, double SmoothedLoss, double Lr, double Seconds);

/// <summary>
/// The smoothed loss sdlora reports, logs and plots: TensorBoard's scalar smoothing, i.e. an exponential moving
/// average <c>ema = w·ema + (1 − w)·loss</c> started at 0 and divided by <c>1 − wⁿ</c> after n losses, so the first
/// values are not pulled towards zero. Unlike a mean over all steps it follows the loss as it falls; unlike a fixed
/// window it has no edge where a spike suddenly drops out. Non-finite losses pass through and leave the average as it was.
/// </summary>
public sealed class LossEma
{
    /// <summary>
    /// 0.96: the same mean age (24.5 steps) as a 50-step moving window, which suits the very noisy per-step
    /// diffusion loss; TensorBoard's slider default of 0.6 leaves that noise almost untouched.
    /// </summary>
    public const double DefaultWeight = 0.96;

    private double _biased;
    private int _count;

    public double Weight { get; }

    public LossEma(double weight = DefaultWeight)
    {
        if (!(weight >= 0 && weight < 1)) throw new ArgumentOutOfRangeException(nameof(weight), weight, "the EMA weight must be in [0, 1)");
        Weight = weight;
    }

    /// <summary>Adds one loss and returns the smoothed value after it.</summary>
    public double Add(double loss)
    {
        if (!double.IsFinite(loss)) return loss;
        _biased = Weight * _biased + (1 - Weight) * loss;
        _count++;
        return _biased / (1 - Math.Pow(Weight, _count));
    }

    /// <summary>The smoothed value after each of <paramref name="losses"/>.</summary>
    public static double[] Smooth(IEnumerable<double> losses, double weight = DefaultWeight)
    {
        var ema = new LossEma(weight);
        return losses.Select(ema.Add).ToArray();
    }
}

/// <summary>
/// <c>loss.csv</c> (<c>step,epoch,loss,smoothed_loss,lr,seconds</c>), appended one flushed line per step;
/// <c>smoothed_loss</c> is the <see cref="LossEma"/>. On resume the existing rows are read back, rows past the
/// resumed step dropped and the smoothing recomputed from the kept losses (atomic rewrite), so a resumed run logs
/// the same values as one that never stopped.
/// </summary>
public sealed class LossLog
{
    public const string Header = "step,epoch,loss,smoothed_loss,lr,seconds";
    private readonly List<LossRow> _rows = [];
    private readonly LossEma _ema;

    public string CsvPath { get; }
    /// <summary>The <see cref="LossEma"/> weight.</summary>
    public double Smoothing => _ema.Weight;
    public IReadOnlyList<LossRow> Rows => _rows;

    private LossLog(string csvPath, double smoothing) { CsvPath = csvPath; _ema = new LossEma(smoothing); }

    /// <summary>
    /// A fresh log (any old file replaced) when <paramref name="resumeFromStep"/> is null; otherwise the existing
    /// log with every row of step &gt; <paramref name="resumeFromStep"/> removed.
    /// </summary>
    public static LossLog Open(string csvPath, int? resumeFromStep = null, double smoothing = LossEma.DefaultWeight)
    {
        var log = new LossLog(csvPath, smoothing);
        if (resumeFromStep is { } keepUpTo && File.Exists(csvPath))
            foreach (var row in Read(csvPath).Where(r => r.Step <= keepUpTo))
                log._rows.Add(row with { SmoothedLoss = log._ema.Add(row.Loss) });
        log.Rewrite();
        return log;
    }

    /// <summary>Parses a loss.csv; malformed lines (e.g. torn by a crash) are skipped.</summary>
    public static List<LossRow> Read(string csvPath)
    {
        var rows = new List<LossRow>();
        foreach (var line in File.ReadLines(csvPath).Skip(1))
        {
            var f = line.Split(',');
            if (f.Length != 6) continue;
            var n = new double[6];
            bool ok = true;
            for (int i = 0; i < 6 && ok; i++) ok = double.TryParse(f[i], NumberStyles.Float, CultureInfo.InvariantCulture, out n[i]);
            if (ok) rows.Add(new LossRow((int)n[0], (int)n[1], n[2], n[3], n[4], n[5]));
        }
        return rows;
    }

    /// <summary>Records a step and appends it to the file; returns the row with its smoothed loss.</summary>
    public LossRow Append(int step, int epoch, double loss, double lr, double seconds)
    {
        var row = new LossRow(step, epoch, loss, _ema.Add(loss), lr, seconds);
        _rows.Add(row);
        using var fs = new FileStream(CsvPath, FileMode.Append, FileAccess.Write, FileShare.Read);
        var bytes = Encoding.UTF8.GetBytes(Format(row) + "\n");
        fs.Write(bytes);
        fs.Flush(flushToDisk: false);
        return row;
    }

    private void Rewrite()
    {
        var sb = new StringBuilder(Header).Append('\n');
        foreach (var r in _rows) sb.Append(Format(r)).Append('\n');
        AtomicFile.WriteAllText(CsvPath, sb.ToString());
    }

    private static string Format(LossRow r) => string.Create(CultureInfo.InvariantCulture,
        $"{r.Step},{r.Epoch},{r.Loss:G9},{r.SmoothedLoss:G9},{r.Lr:G9},{r.Seconds:F3}");

    /// <summary>Draws <c>loss.png</c> from the rows so far.</summary>
    public void RenderPlot(string pngPath) => LossPlot.Render(_rows, pngPath, smoothing: Smoothing);
}
