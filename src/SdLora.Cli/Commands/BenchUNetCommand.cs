using System.CommandLine;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>unet</c> benchmark: full-size SD1.5 UNet forward speed and efficiency against dense matmul.</summary>
public static class BenchUNetCommand
{
    public static Command Create(CliContext cli, string name = "unet")
    {
        var dtype = new Option<string>("--dtype") { Description = "fp32 or bf16", DefaultValueFactory = _ => "fp32" };
        var steps = new Option<int>("--steps") { Description = "timed forwards (after one warm-up)", DefaultValueFactory = _ => 1 };
        var size = new Option<int>("--size") { Description = "image size in pixels (latents are size/8)", DefaultValueFactory = _ => 512 };
        var lowPrecision = BenchHost.CpuLowPrecisionOption();
        var command = new Command(name, "time a full-size SD1.5 UNet CFG step (batch 2, 77x768 context) with random weights") { dtype, steps, size, lowPrecision };
        command.SetAction(parse =>
        {
            BenchHost.Start();
            var options = new UNetBenchmarkOptions(
                DType: ComputeOptions.ParseDType(parse.GetValue(dtype)!),
                Steps: Math.Max(1, parse.GetValue(steps)),
                LatentSize: Math.Max(8, parse.GetValue(size) / 8),
                CpuLowPrecision: ComputeOptions.ParseCpuLowPrecision(parse.GetValue(lowPrecision)!));
            var progress = new Progress<string>(m => cli.Console.MarkupLineInterpolated($"[grey]{m}[/]"));
            var r = UNetBenchmark.Run(options, progress);
            var table = BenchTable.Create(r.Matmul, r.Threads);
            table.AddRow("UNet forward", $"{r.ForwardGFlop:F0} GFLOP (batch {options.Batch}, {options.LatentSize}x{options.LatentSize} latents)");
            BenchTable.AddStepRows(table, r.StepSeconds, r.GFlopsPerSecond, r.EfficiencySameDType, r.EfficiencyAny);
            table.AddRow("peak RSS (whole run)", BenchTable.MiB(r.PeakRssBytes));
            table.AddRow("RSS with model built", BenchTable.MiB(r.ModelRssBytes));
            table.AddRow("peak RSS during forwards", r.ForwardPeakRssBytes > 0 ? BenchTable.MiB(r.ForwardPeakRssBytes) : "n/a");
            cli.Console.Write(table);
            return 0;
        });
        return command;
    }
}
