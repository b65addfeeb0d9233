using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>The table the step benchmarks print: matmul ceiling, then the model's rows, then the step figures.</summary>
public static class BenchTable
{
    public static Table Create(IEnumerable<MatmulThroughput> matmul, int threads)
    {
        var table = new Table().AddColumns("measure", "value");
        foreach (var m in matmul)
            table.AddRow($"{m.Kernel} {ComputeOptions.DTypeName(m.DType)} {m.Size}²", $"{m.GFlopsPerSecond:F1} GFLOP/s");
        table.AddRow("threads", threads.ToString());
        return table;
    }

    public static void AddStepRows(Table table, IReadOnlyList<double> stepSeconds, double gflopsPerSecond, double efficiencySameDType, double efficiencyAny)
    {
        table.AddRow("seconds per step", $"{stepSeconds.Average():F2} s ({string.Join(", ", stepSeconds.Select(s => s.ToString("F2")))})");
        table.AddRow("achieved", $"{gflopsPerSecond:F1} GFLOP/s");
        table.AddRow("efficiency vs same-dtype matmul", $"{efficiencySameDType:P0}");
        table.AddRow("efficiency vs best matmul", $"{efficiencyAny:P0}");
    }

    public static string MiB(long bytes) => $"{bytes / 1048576.0:F0} MiB";
}
