using System.Globalization;
using System.Text;
using SdLora.IO;

namespace SdLora.Training;

/// <summary>One optimizer step in <c>loss.csv</c>. <see cref="Seconds"/> is wall time since the run began (continued across resumes).</summary>
public sealed record LossRow(int Step, int Epoch, double Loss, double SmoothedLoss, double Lr, double Seconds);

/// <summary>
/// <c>loss.csv</c> (<c>step,epoch,loss,smoothed_loss,lr,seconds</c>), appended one flushed line per step.
/// The smoothed loss is the plain mean of the last <see cref="Window"/> losses (kohya shows the mean over the
/// last epoch's worth of steps; a fixed window reads the same on short and long runs). On resume the
/// existing rows are read back and rows past the resumed step are dropped (atomic rewrite).
/// </summary>
public sealed class LossLog
{
    public const string Header = "step,epoch,loss,smoothed_loss,lr,seconds";
    private readonly List<LossRow> _rows = [];
    private readonly Queue<double> _window = new();
    private double _windowSum;

    public string CsvPath { get; }
    public int Window { get; }
    public IReadOnlyList<LossRow> Rows => _rows;

    private LossLog(string csvPath, int window) { CsvPath = csvPath; Window = window; }

    /// <summary>
    /// A fresh log (any old file replaced) when <paramref name="resumeFromStep"/> is null; otherwise the existing
    /// log with every row of step &gt; <paramref name="resumeFromStep"/> removed.
    /// </summary>
    public static LossLog Open(string csvPath, int? resumeFromStep = null, int window = 50)
    {
        if (window < 1) throw new ArgumentOutOfRangeException(nameof(window));
        var log = new LossLog(csvPath, window);
        if (resumeFromStep is { } keepUpTo && File.Exists(csvPath))
        {
            foreach (var row in Read(csvPath).Where(r => r.Step <= keepUpTo)) log.Add(row);
            // Recompute nothing: smoothed values were right when written; the window is refilled from the kept losses.
        }
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

    private void Add(LossRow row)
    {
        _rows.Add(row);
        _window.Enqueue(row.Loss); _windowSum += row.Loss;
        if (_window.Count > Window) _windowSum -= _window.Dequeue();
    }

    /// <summary>Records a step and appends it to the file; returns the row with its smoothed loss.</summary>
    public LossRow Append(int step, int epoch, double loss, double lr, double seconds)
    {
        _window.Enqueue(loss); _windowSum += loss;
        if (_window.Count > Window) _windowSum -= _window.Dequeue();
        var row = new LossRow(step, epoch, loss, _windowSum / _window.Count, lr, seconds);
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
    public void RenderPlot(string pngPath) => LossPlot.Render(_rows, pngPath);
}
