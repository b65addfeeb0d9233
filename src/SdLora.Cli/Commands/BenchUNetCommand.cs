using System.CommandLine;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>unet</c> benchmark: full-size SD1.5 UNet forward speed and efficiency against dense matmul.</summary>
public static class BenchUNetCommand
{
    public static Command Create(CliContext cli, string name = "unet")
    {
        var dtype = BenchHost.DTypeOption();
        var steps = new Option<int>("--steps") { Description = "timed forwards (after one warm-up)", DefaultValueFactory = _ => 1 };
        var size = new Option<int>("--size") { Description = "image size in pixels (latents are size/8)", DefaultValueFactory = _ => 512 };
        var lowPrecision = BenchHost.CpuLowPrecisionOption();
        var json = BenchJson.Option();
        var profile = new Option<bool>("--profile") { Description = "one more forward with per-module timers: time, share and GFLOP/s of convs, linears, attention, norms, ..." };
        var command = new Command(name, "time a full-size SD1.5 UNet CFG step (batch 2, 77x768 context) with random weights") { dtype, steps, size, lowPrecision, json, profile };
        command.SetAction(parse =>
        {
            BenchHost.Start();
            bool asJson = parse.GetValue(json);
            var compute = BenchHost.Compute(parse.GetValue(dtype)!, parse.GetValue(lowPrecision)!, cli, BenchJson.Note(cli, asJson));
            var options = new UNetBenchmarkOptions(
                DType: compute.DType,
                Steps: Math.Max(1, parse.GetValue(steps)),
                LatentSize: Math.Max(8, parse.GetValue(size) / 8),
                CpuLowPrecision: compute.CpuLowPrecision,
                Profile: parse.GetValue(profile));
            var r = UNetBenchmark.Run(options, BenchJson.Progress(cli, asJson), cli.Cancellation);
            if (asJson)
            {
                BenchJson.Write(parse, new()
                {
                    ["benchmark"] = "unet",
                    ["what"] = $"SD1.5 UNet forward (random weights), batch {options.Batch} (a CFG step), {options.LatentSize}x{options.LatentSize} latents, {options.ContextTokens}-token context",
                    ["size"] = options.LatentSize * 8,
                    ["seconds_per_step"] = r.SecondsPerStep,
                    ["step_seconds"] = r.StepSeconds,
                    ["gflop"] = r.ForwardGFlop,
                    ["gflops"] = r.GFlopsPerSecond,
                    ["efficiency"] = r.EfficiencySameDType,
                    ["efficiency_vs_best_dtype"] = r.EfficiencyAny,
                    ["peak_rss_bytes"] = r.PeakRssBytes,
                    ["model_rss_bytes"] = r.ModelRssBytes,
                    ["forward_peak_rss_bytes"] = r.ForwardPeakRssBytes,
                    ["profile_seconds"] = r.Profile is null ? null : r.ProfiledSeconds,
                    ["profile"] = r.Profile?.Select(t => new Dictionary<string, object?>
                    {
                        ["kind"] = t.Kind, ["seconds"] = t.Seconds, ["calls"] = t.Calls, ["gflop"] = t.GFlop, ["gflops"] = t.GFlopsPerSecond,
                    }).ToList(),
                }, BenchJson.Precision(compute, parse.GetValue(dtype)!), BenchJson.Ceiling(r.Matmul, compute.DType));
                return 0;
            }
            var table = BenchTable.Create(r.Matmul, r.Threads);
            table.AddRow("precision", compute.Describe());
            table.AddRow("UNet forward", $"{r.ForwardGFlop:F0} GFLOP (batch {options.Batch}, {options.LatentSize}x{options.LatentSize} latents)");
            BenchTable.AddStepRows(table, r.StepSeconds, r.GFlopsPerSecond, r.EfficiencySameDType, r.EfficiencyAny);
            table.AddRow("peak RSS (whole run)", BenchTable.MiB(r.PeakRssBytes));
            table.AddRow("RSS with model built", BenchTable.MiB(r.ModelRssBytes));
            table.AddRow("peak RSS during forwards", r.ForwardPeakRssBytes > 0 ? BenchTable.MiB(r.ForwardPeakRssBytes) : "n/a");
            cli.Console.Write(table);
            if (r.Profile is { } times)
            {
                var p = new Table().AddColumns("module kind (exclusive time)", "seconds", "share", "calls", "GFLOP", "GFLOP/s");
                double total = times.Sum(t => t.Seconds);
                foreach (var t in times.Where(t => t.Seconds > 0.0005 * total))
                    p.AddRow(t.Kind, $"{t.Seconds:F3}", $"{t.Seconds / total:P1}", t.Calls.ToString(), t.GFlop > 0 ? $"{t.GFlop:F0}" : "", t.GFlop > 0 ? $"{t.GFlopsPerSecond:F1}" : "");
                p.AddRow("profiled forward (with hooks)", $"{r.ProfiledSeconds:F2}", "", "", "", "");
                cli.Console.Write(p);
            }
            return 0;
        });
        return command;
    }
}
