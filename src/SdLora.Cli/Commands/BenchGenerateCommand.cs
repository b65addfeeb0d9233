using System.CommandLine;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora bench generate</c>: seconds per txt2img CFG step of full-size SD1.5 and the efficiency against dense matmul.</summary>
public static class BenchGenerateCommand
{
    public static Command Create(CliContext cli, string name = "generate")
    {
        var dtype = BenchHost.DTypeOption();
        var steps = new Option<int>("--steps") { Description = "timed sampling steps (after one warm-up step)", DefaultValueFactory = _ => 2 };
        var size = new Option<int>("--size") { Description = "image size in pixels", DefaultValueFactory = _ => 512 };
        var sampler = new Option<string>("--sampler") { Description = "sampler", DefaultValueFactory = _ => "Euler" };
        var lowPrecision = BenchHost.CpuLowPrecisionOption();
        var json = BenchJson.Option();
        var command = new Command(name, "time txt2img sampling steps (CFG, UNet batch 2) of a full-size SD1.5 model with random weights")
        {
            dtype, steps, size, sampler, lowPrecision, json,
        };
        command.SetAction(parse =>
        {
            BenchHost.Start();
            bool asJson = parse.GetValue(json);
            var compute = BenchHost.Compute(parse.GetValue(dtype)!, parse.GetValue(lowPrecision)!, cli, BenchJson.Note(cli, asJson));
            var o = new GenerateBenchmarkOptions(compute.DType, Math.Max(1, parse.GetValue(steps)), parse.GetValue(size), parse.GetValue(sampler)!, compute.CpuLowPrecision);
            var r = GenerateBenchmark.Run(o, BenchJson.Progress(cli, asJson), cli.Cancellation);
            if (asJson)
            {
                BenchJson.Write(parse, new()
                {
                    ["benchmark"] = "generate",
                    ["what"] = $"txt2img sampling steps of SD1.5 (random weights) through Txt2ImgPipeline.Sample: {o.Size}x{o.Size}, CFG (UNet batch 2), {o.Sampler}",
                    ["size"] = o.Size,
                    ["sampler"] = o.Sampler,
                    ["seconds_per_step"] = r.SecondsPerStep,
                    ["step_seconds"] = r.StepSeconds,
                    ["unet_forward_seconds"] = r.UNetForwardSeconds,
                    ["overhead_seconds_per_step"] = r.OverheadSeconds,
                    ["gflop"] = r.StepGFlop,
                    ["gflops"] = r.GFlopsPerSecond,
                    ["efficiency"] = r.EfficiencySameDType,
                    ["efficiency_vs_best_dtype"] = r.EfficiencyAny,
                    ["peak_rss_bytes"] = r.PeakRssBytes,
                }, BenchJson.Precision(compute, parse.GetValue(dtype)!), BenchJson.Ceiling(r.Matmul, compute.DType));
                return 0;
            }
            var table = BenchTable.Create(r.Matmul, r.Threads);
            table.AddRow("precision", compute.Describe());
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
