using System.CommandLine;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>train</c> benchmark: training steps of the full-size SD1.5 UNet, with and without gradient checkpointing: a LoRA
/// (<c>--method lora</c>) or the whole UNet (<c>--method dreambooth</c>, with AdamW and/or Adafactor).
/// </summary>
public static class BenchTrainCommand
{
    public static Command Create(CliContext cli, string name = "train")
    {
        var dtype = BenchHost.DTypeOption("auto (the CPU probe decides; default), fp32, bf16 or both (fp32 then bf16)");
        var checkpointing = new Option<string>("--checkpointing") { Description = "off, on or both", DefaultValueFactory = _ => "both" };
        var steps = new Option<int>("--steps") { Description = "timed steps (after one warm-up)", DefaultValueFactory = _ => 1 };
        var size = new Option<int>("--size") { Description = "image size in pixels (latents are size/8)", DefaultValueFactory = _ => 512 };
        var rank = new Option<int>("--rank") { Description = "LoRA rank on the attention projections", DefaultValueFactory = _ => 16 };
        var lowPrecision = BenchHost.CpuLowPrecisionOption();
        var json = BenchJson.Option();
        var method = new Option<string>("--method") { Description = "lora (a LoRA on attention) or dreambooth (every UNet weight)", DefaultValueFactory = _ => "lora" };
        var optimizer = new Option<string>("--optimizer") { Description = "dreambooth: AdamW, Adafactor or both", DefaultValueFactory = _ => "both" };
        var command = new Command(name, "time training steps (forward + backward + optimizer) of a full-size SD1.5 UNet with random weights, batch 1: a LoRA or the whole UNet")
        {
            dtype, checkpointing, steps, size, rank, lowPrecision, method, optimizer, json,
        };
        command.SetAction(parse =>
        {
            BenchHost.Start();
            bool asJson = parse.GetValue(json);
            var dtypes = parse.GetValue(dtype) == "both" ? ["fp32", "bf16"] : new[] { parse.GetValue(dtype)! };
            var computes = dtypes.Select(d => BenchHost.Compute(d, parse.GetValue(lowPrecision)!, cli, BenchJson.Note(cli, asJson))).ToList();
            var ckpts = parse.GetValue(checkpointing) switch
            {
                "both" => new[] { false, true }, "on" => [true], "off" => [false],
                var v => throw new SdLoraException($"--checkpointing '{v}' is not one of off, on, both"),
            };
            bool full = parse.GetValue(method)!.ToLowerInvariant() switch
            {
                "lora" => false, "dreambooth" => true,
                var v => throw new SdLoraException($"--method '{v}' is not one of lora, dreambooth"),
            };
            var optimizers = !full ? ["AdamW"] : parse.GetValue(optimizer)!.ToLowerInvariant() switch
            {
                "both" => new[] { "AdamW", "Adafactor" }, "adamw" => ["AdamW"], "adafactor" => ["Adafactor"],
                var v => throw new SdLoraException($"--optimizer '{v}' is not one of AdamW, Adafactor, both"),
            };
            var progress = BenchJson.Progress(cli, asJson);
            progress.Report("measuring dense matmul throughput");
            var matmul = UNetBenchmark.MeasureCeiling(computes.Select(c => c.DType), cli.Cancellation);
            var table = new Table().AddColumns("method", "optimizer", "dtype", "checkpointing", "s/step", "train GFLOP", "GFLOP/s", "vs same-dtype matmul", "vs best matmul", "peak RSS");
            var runs = new List<Dictionary<string, object?>>();
            foreach (var opt in optimizers)
                for (int i = 0; i < computes.Count; i++)
                    foreach (var ck in ckpts)
                    {
                        var compute = computes[i];
                        var t = compute.DType;
                        var r = TrainBenchmark.Run(new TrainBenchmarkOptions(t, ck, Math.Max(1, parse.GetValue(steps)), 1,
                            Math.Max(8, parse.GetValue(size) / 8), 1, parse.GetValue(rank), CpuLowPrecision: compute.CpuLowPrecision, FullFineTune: full, Optimizer: opt),
                            matmul, progress, cli.Cancellation);
                        table.AddRow(full ? "dreambooth" : "lora", opt, compute.Describe(), ck ? "on" : "off", $"{r.SecondsPerStep:F1}", $"{r.TrainGFlop:F0}",
                            $"{r.GFlopsPerSecond:F1}", $"{r.EfficiencySameDType:P0}", $"{r.EfficiencyAny:P0}", $"{r.PeakRssBytes / 1048576.0:F0} MiB");
                        progress.Report($"{(full ? $"dreambooth {opt}" : "lora")} {compute.Describe()} checkpointing {(ck ? "on" : "off")}: {r.SecondsPerStep:F1} s/step, " +
                            $"peak RSS {r.PeakRssBytes / 1048576.0:F0} MiB (model {r.ModelRssBytes / 1048576.0:F0} MiB), {r.LoraParameters:N0} trained parameters");
                        var run = BenchJson.Precision(compute, dtypes[i]);
                        foreach (var (k, v) in new Dictionary<string, object?>
                        {
                            ["method"] = full ? "dreambooth" : "lora",
                            ["optimizer"] = opt,
                            ["gradient_checkpointing"] = ck,
                            ["seconds_per_step"] = r.SecondsPerStep,
                            ["step_seconds"] = r.StepSeconds,
                            ["gflop"] = r.TrainGFlop,
                            ["gflops"] = r.GFlopsPerSecond,
                            ["ceiling_gflops"] = r.PeakSameDTypeGFlops,
                            ["efficiency"] = r.EfficiencySameDType,
                            ["efficiency_vs_best_dtype"] = r.EfficiencyAny,
                            ["peak_rss_bytes"] = r.PeakRssBytes,
                            ["model_rss_bytes"] = r.ModelRssBytes,
                            ["trained_parameters"] = r.LoraParameters,
                        }) run[k] = v;
                        runs.Add(run);
                    }
            if (asJson)
            {
                // The first run's figures at the top level (the one a script usually wants), every run under "runs".
                var top = new Dictionary<string, object?>(runs[0])
                {
                    ["benchmark"] = "train",
                    ["what"] = full
                        ? $"DreamBooth full fine-tuning step (forward + backward + optimizer) of the SD1.5 UNet (random weights), batch 1, {parse.GetValue(size)}x{parse.GetValue(size)}; train FLOPs = forward x 3 (x 4 with checkpointing)"
                        : $"LoRA training step (forward + backward + AdamW) of the SD1.5 UNet (random weights), batch 1, {parse.GetValue(size)}x{parse.GetValue(size)}, rank {parse.GetValue(rank)} on attention; train FLOPs = forward x 2 (x 3 with checkpointing)",
                    ["size"] = parse.GetValue(size),
                    ["runs"] = runs,
                };
                BenchJson.Write(parse, top, BenchJson.Ceiling(matmul, computes[0].DType));
                return 0;
            }
            foreach (var m in matmul)
                cli.Console.MarkupLineInterpolated($"[grey]{m.Kernel} {ComputeOptions.DTypeName(m.DType)} {m.Size}²: {m.GFlopsPerSecond:F1} GFLOP/s[/]");
            cli.Console.Write(table);
            cli.Console.MarkupLine(full
                ? "[grey]train FLOPs = forward x 3 (backward computes activation and weight gradients), x 4 with checkpointing (forward recomputed)[/]"
                : "[grey]train FLOPs = forward x 2 (frozen base: backward propagates activations only), x 3 with checkpointing (forward recomputed)[/]");
            return 0;
        });
        return command;
    }
}
