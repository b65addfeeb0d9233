using System.CommandLine;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora bench generate</c>: seconds per txt2img CFG step of full-size SD1.5 and the efficiency against dense matmul.</summary>
public static class BenchGenerateCommand
{
    public static Command Create(CliContext cli, string name = "generate")
    {
        var dtype = new Option<string>("--dtype") { Description = "fp32 or bf16", DefaultValueFactory = _ => "fp32" };
        var steps = new Option<int>("--steps") { Description = "timed sampling steps (after one warm-up step)", DefaultValueFactory = _ => 2 };
        var size = new Option<int>("--size") { Description = "image size in pixels", DefaultValueFactory = _ => 512 };
        var sampler = new Option<string>("--sampler") { Description = "sampler", DefaultValueFactory = _ => "Euler" };
        var lowPrecision = BenchHost.CpuLowPrecisionOption();
        var command = new Command(name, "time txt2img sampling steps (CFG, UNet batch 2) of a full-size SD1.5 model with random weights")
        {
            dtype, steps, size, sampler, lowPrecision,
        };
        command.SetAction(parse =>
        {
            BenchHost.Start();
            var o = new GenerateBenchmarkOptions(ComputeOptions.ParseDType(parse.GetValue(dtype)!), Math.Max(1, parse.GetValue(steps)),
                parse.GetValue(size), parse.GetValue(sampler)!, ComputeOptions.ParseCpuLowPrecision(parse.GetValue(lowPrecision)!));
            var r = GenerateBenchmark.Run(o, new SyncProgress<string>(m => cli.Console.MarkupLineInterpolated($"[grey]{m}[/]")), cli.Cancellation);
            var table = BenchTable.Create(r.Matmul, r.Threads);
            table.AddRow("model FLOPs per CFG step", $"{r.StepGFlop:F0} GFLOP ({o.Size}x{o.Size}, UNet batch 2)");
            BenchTable.AddStepRows(table, r.StepSeconds, r.GFlopsPerSecond, r.EfficiencySameDType, r.EfficiencyAny);
            table.AddRow("bare UNet forward", $"{r.UNetForwardSeconds:F2} s (overhead per step {r.OverheadSeconds:F2} s)");
            table.AddRow("peak RSS", BenchTable.MiB(r.PeakRssBytes));
            cli.Console.Write(table);
            return 0;
        });
        return command;
    }
}
