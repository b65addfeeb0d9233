using System.CommandLine;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>unet</c> benchmark: full-size SD1.5 UNet forward speed and efficiency against dense matmul.</summary>
public static class BenchUNetCommand
{
    public static Command Create(string name = "unet")
    {
        var dtype = new Option<string>("--dtype") { Description = "fp32 or bf16", DefaultValueFactory = _ => "fp32" };
        var steps = new Option<int>("--steps") { Description = "timed forwards (after one warm-up)", DefaultValueFactory = _ => 1 };
        var size = new Option<int>("--size") { Description = "image size in pixels (latents are size/8)", DefaultValueFactory = _ => 512 };
        var threads = new Option<int?>("--threads") { Description = "torch intra-op threads (default: torch's choice)" };
        var command = new Command(name, "time a full-size SD1.5 UNet CFG step (batch 2, 77x768 context) with random weights") { dtype, steps, size, threads };
        command.SetAction(parse =>
        {
            var options = new UNetBenchmarkOptions(
                DType: ComputeOptions.ParseDType(parse.GetValue(dtype)!),
                Steps: Math.Max(1, parse.GetValue(steps)),
                LatentSize: Math.Max(8, parse.GetValue(size) / 8),
                Threads: parse.GetValue(threads));
            var progress = new Progress<string>(m => AnsiConsole.MarkupLineInterpolated($"[grey]{m}[/]"));
            var r = UNetBenchmark.Run(options, progress);
            var table = new Table().AddColumns("measure", "value");
            foreach (var m in r.Matmul)
                table.AddRow($"{m.Kernel} {ComputeOptions.DTypeName(m.DType)} {m.Size}²", $"{m.GFlopsPerSecond:F1} GFLOP/s");
            table.AddRow("threads", r.Threads.ToString());
            table.AddRow("UNet forward", $"{r.ForwardGFlop:F0} GFLOP (batch {options.Batch}, {options.LatentSize}x{options.LatentSize} latents)");
            table.AddRow("seconds per step", $"{r.SecondsPerStep:F2} s ({string.Join(", ", r.StepSeconds.Select(s => s.ToString("F2")))})");
            table.AddRow("achieved", $"{r.GFlopsPerSecond:F1} GFLOP/s");
            table.AddRow("efficiency vs same-dtype matmul", $"{r.EfficiencySameDType:P0}");
            table.AddRow("efficiency vs best matmul", $"{r.EfficiencyAny:P0}");
            table.AddRow("peak RSS (whole run)", $"{r.PeakRssBytes / 1048576.0:F0} MiB");
            table.AddRow("RSS with model built", $"{r.ModelRssBytes / 1048576.0:F0} MiB");
            table.AddRow("peak RSS during forwards", r.ForwardPeakRssBytes > 0 ? $"{r.ForwardPeakRssBytes / 1048576.0:F0} MiB" : "n/a");
            AnsiConsole.Write(table);
            return 0;
        });
        return command;
    }
}
