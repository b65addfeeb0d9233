using System.CommandLine;
using SdLora.Benchmarks;
using SdLora.Models;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora bench vae</c>: VAE decode (and encode) of the full-size SD1.5 VAE: time, efficiency, peak memory, tiled or not.</summary>
public static class BenchVaeCommand
{
    public static Command Create(CliContext cli, string name = "vae")
    {
        var dtype = BenchHost.DTypeOption();
        var size = new Option<int>("--size") { Description = "image size in pixels (multiple of 8)", DefaultValueFactory = _ => 512 };
        var repeats = new Option<int>("--repeats") { Description = "timed runs of each direction (after one warm-up); the best counts", DefaultValueFactory = _ => 1 };
        var tiled = new Option<bool>("--tiled") { Description = "decode/encode in overlapping tiles (512 px tiles, 128 px overlap)" };
        var tile = new Option<int>("--tile") { Description = "tile size in pixels with --tiled (multiple of 8)", DefaultValueFactory = _ => 512 };
        var noEncode = new Option<bool>("--no-encode") { Description = "time the decoder only" };
        var lowPrecision = BenchHost.CpuLowPrecisionOption();
        var json = BenchJson.Option();
        var command = new Command(name, "time VAE decode (every image's last step) and encode (latent caching) of the SD1.5 VAE with random weights")
        {
            dtype, size, repeats, tiled, tile, noEncode, lowPrecision, json,
        };
        command.SetAction(parse =>
        {
            BenchHost.Start();
            bool asJson = parse.GetValue(json);
            int px = parse.GetValue(size);
            if (px < 64 || px % 8 != 0) throw new SdLoraException($"--size {px}: use a multiple of 8, at least 64");
            var compute = BenchHost.Compute(parse.GetValue(dtype)!, parse.GetValue(lowPrecision)!, cli, BenchJson.Note(cli, asJson));
            var tiling = parse.GetValue(tiled) ? new VaeTiling(parse.GetValue(tile) / 8, parse.GetValue(tile) / 32) : null;
            var o = new VaeBenchmarkOptions(compute, px, Math.Max(1, parse.GetValue(repeats)), !parse.GetValue(noEncode), tiling);
            var r = VaeBenchmark.Run(o, BenchJson.Progress(cli, asJson), cli.Cancellation);
            var decode = r.Phases[0];
            if (asJson)
            {
                BenchJson.Write(parse, new()
                {
                    ["benchmark"] = "vae",
                    ["what"] = $"SD1.5 VAE (random weights), one {px}x{px} image, decode{(o.Encode ? " and encode" : "")}{(tiling is null ? "" : $", tiled ({tiling.TileLatent * 8} px tiles, {tiling.OverlapLatent * 8} px overlap)")}",
                    ["size"] = px,
                    ["tiled"] = tiling is not null,
                    ["seconds_per_image"] = decode.SecondsPerImage,
                    ["gflop"] = decode.GFlop,
                    ["gflops"] = decode.GFlopsPerSecond,
                    ["efficiency"] = r.Efficiency(decode),
                    ["peak_rss_bytes"] = r.Phases.Max(p => p.PeakRssBytes),
                    ["model_rss_bytes"] = r.ModelRssBytes,
                    ["phases"] = r.Phases.Select(p => new Dictionary<string, object?>
                    {
                        ["phase"] = p.Phase, ["seconds_per_image"] = p.SecondsPerImage, ["seconds"] = p.Seconds, ["gflop"] = p.GFlop,
                        ["gflops"] = p.GFlopsPerSecond, ["efficiency"] = r.Efficiency(p), ["peak_rss_bytes"] = p.PeakRssBytes,
                    }).ToList(),
                }, BenchJson.Precision(compute, parse.GetValue(dtype)!), BenchJson.Ceiling(r.Matmul, compute.DType));
                return 0;
            }
            var table = BenchTable.Create(r.Matmul, r.Threads);
            table.AddRow("precision", compute.Describe());
            table.AddRow("RSS with the VAE built", BenchTable.MiB(r.ModelRssBytes));
            foreach (var p in r.Phases)
            {
                table.AddRow($"{p.Phase} {px}x{px}{(tiling is null ? "" : " tiled")}", $"{p.SecondsPerImage:F2} s/image ({string.Join(", ", p.Seconds.Select(s => s.ToString("F2")))}), {p.GFlop:F0} GFLOP");
                table.AddRow($"{p.Phase} achieved", $"{p.GFlopsPerSecond:F1} GFLOP/s = {r.Efficiency(p):P0} of the same-dtype matmul");
                table.AddRow($"{p.Phase} peak RSS", BenchTable.MiB(p.PeakRssBytes));
            }
            cli.Console.Write(table);
            return 0;
        });
        return command;
    }
}
