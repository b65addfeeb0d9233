using System.CommandLine;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>unet</c> benchmark: full-size SD1.5 UNet forward speed and efficiency against dense matmul.</summary>
public static class BenchUNetCommand
{
    public static Command Create(string name = "unet")
    {
        var dtype = BenchHost.DTypeOption();
        var steps = new Option<int>("--steps") { Description = "timed forwards (after one warm-up)", DefaultValueFactory = _ => 1 };
        var size = new Option<int>("--size") { Description = "image size in pixels (latents are size/8)", DefaultValueFactory = _ => 512 };
        var threads = BenchHost.ThreadsOption();
        var lowPrecision = BenchHost.CpuLowPrecisionOption();
        var command = new Command(name, "time a full-size SD1.5 UNet CFG step (batch 2, 77x768 context) with random weights") { dtype, steps, size, threads, lowPrecision };
        command.SetAction(parse =>
        {
            BenchHost.Start(parse.GetValue(threads));
            var compute = BenchHost.Compute(parse.GetValue(dtype)!, parse.GetValue(lowPrecision)!);
            var options = new UNetBenchmarkOptions(
                DType: compute.DType,
                Steps: Math.Max(1, parse.GetValue(steps)),
                LatentSize: Math.Max(8, parse.GetValue(size) / 8),
                CpuLowPrecision: compute.CpuLowPrecision);
            var progress = new Progress<string>(m => AnsiConsole.MarkupLineInterpolated($"[grey]{m}[/]"));
            var r = UNetBenchmark.Run(options, progress);
            var table = BenchTable.Create(r.Matmul, r.Threads);
            table.AddRow("UNet forward", $"{r.ForwardGFlop:F0} GFLOP (batch {options.Batch}, {options.LatentSize}x{options.LatentSize} latents)");
            BenchTable.AddStepRows(table, r.StepSeconds, r.GFlopsPerSecond, r.EfficiencySameDType, r.EfficiencyAny);
            table.AddRow("peak RSS (whole run)", BenchTable.MiB(r.PeakRssBytes));
            table.AddRow("RSS with model built", BenchTable.MiB(r.ModelRssBytes));
            table.AddRow("peak RSS during forwards", r.ForwardPeakRssBytes > 0 ? BenchTable.MiB(r.ForwardPeakRssBytes) : "n/a");
            AnsiConsole.Write(table);
            return 0;
        });
        return command;
    }
}
