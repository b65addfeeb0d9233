using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>The <c>--verbose</c> summary of generate and train: each phase's wall time, its share, and the process's peak memory.</summary>
public static class PhaseReport
{
    /// <param name="samplingSteps">Sampling steps in the run (adds seconds per step to the sampling row), or 0.</param>
    public static void Print(CliContext cli, IReadOnlyList<PhaseTime> phases, ComputeOptions compute, int samplingSteps = 0)
    {
        double total = phases.Sum(p => p.Seconds);
        var table = new Table().AddColumns("phase", "seconds", "share", "RSS after", "peak RSS so far");
        static string GiB(long b) => b > 0 ? $"{b / 1073741824.0:F2} GiB" : "";
        foreach (var p in phases)
        {
            string extra = p.Count > 1 ? $" ({p.Count}x)" : "";
            if (samplingSteps > 0 && p.Phase == "sampling") extra += $" = {p.Seconds / samplingSteps:F2} s/step";
            table.AddRow(Markup.Escape(p.Phase + extra), $"{p.Seconds:F2}", total > 0 ? $"{p.Seconds / total:P0}" : "", GiB(p.ResidentBytesAfter), GiB(p.PeakResidentBytes));
        }
        table.AddRow("total", $"{total:F2}", "", "", "");
        cli.Console.Write(table);
        long peak = UNetBenchmark.PeakRssBytes();
        cli.Console.MarkupLineInterpolated($"[grey]{compute.Describe()} on {compute.Device}, {TorchSharp.torch.get_num_threads()} threads; peak RSS {(peak > 0 ? $"{peak / 1073741824.0:F2} GiB" : "n/a")}[/]");
    }
}
