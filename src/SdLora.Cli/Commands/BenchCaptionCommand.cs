using System.CommandLine;
using SdLora.Benchmarks;
using SdLora.Captioning;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora bench caption</c>: images per second of full-size BLIP-large (random weights).</summary>
public static class BenchCaptionCommand
{
    public static Command Create(CliContext cli, string name = "caption")
    {
        var batchSizes = new Option<string>("--batch-sizes") { Description = "comma-separated batch sizes", DefaultValueFactory = _ => "1,8" };
        var images = new Option<int>("--images") { Description = "images per batch size (at least one batch)", DefaultValueFactory = _ => 8 };
        var tokens = new Option<int>("--tokens") { Description = "generated tokens per caption (greedy, fixed length)", DefaultValueFactory = _ => 20 };
        var size = new Option<int>("--size") { Description = "input image size", DefaultValueFactory = _ => 384 };
        var computeArguments = new ComputeArguments();
        var json = BenchJson.Option();
        var command = new Command(name, "measure BLIP-large captioning speed (random weights)");
        foreach (var o in new Option[] { batchSizes, images, tokens, size, json }) command.Options.Add(o);
        computeArguments.AddTo(command);
        command.SetAction(parse =>
        {
            BenchHost.Start();
            bool asJson = parse.GetValue(json);
            var sizes = parse.GetValue(batchSizes)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.TryParse(s, out var b) && b > 0 ? b : throw new SdLoraException($"--batch-sizes: '{s}' is not a positive number")).ToArray();
            int imageSize = parse.GetValue(size);
            var config = BlipConfig.Large with { Vision = BlipConfig.Large.Vision with { ImageSize = imageSize } };
            var compute = computeArguments.Read(parse, cli, BenchJson.Note(cli, asJson));
            var progress = BenchJson.Progress(cli, asJson);
            progress.Report("measuring dense matmul throughput");
            var matmul = UNetBenchmark.MeasureCeiling([compute.DType], cli.Cancellation);
            var results = BlipBenchmark.Run(config, sizes, parse.GetValue(images), parse.GetValue(tokens), compute, progress, cli.Cancellation);
            double gflop = BlipFlops.Caption(config, 4 + parse.GetValue(tokens)) / 1e9;
            double ceiling = matmul.Where(m => m.DType == compute.DType).Max(m => m.GFlopsPerSecond);
            if (asJson)
            {
                var runs = results.Select(r => new Dictionary<string, object?>
                {
                    ["batch_size"] = r.BatchSize, ["images"] = r.Images, ["seconds"] = r.Seconds, ["seconds_per_image"] = r.Seconds / r.Images,
                    ["images_per_second"] = r.ImagesPerSecond, ["gflops"] = gflop * r.ImagesPerSecond, ["efficiency"] = gflop * r.ImagesPerSecond / ceiling,
                }).ToList();
                var best = results.MaxBy(r => r.ImagesPerSecond)!;
                BenchJson.Write(parse, new()
                {
                    ["benchmark"] = "caption",
                    ["what"] = $"BLIP-large captioning (random weights), {imageSize}x{imageSize}, greedy, {parse.GetValue(tokens)} generated tokens after a 4-token prompt; best batch size first",
                    ["size"] = imageSize,
                    ["seconds_per_image"] = best.Seconds / best.Images,
                    ["images_per_second"] = best.ImagesPerSecond,
                    ["batch_size"] = best.BatchSize,
                    ["gflop"] = gflop,
                    ["gflops"] = gflop * best.ImagesPerSecond,
                    ["efficiency"] = gflop * best.ImagesPerSecond / ceiling,
                    ["peak_rss_bytes"] = UNetBenchmark.PeakRssBytes(),
                    ["runs"] = runs,
                }, BenchJson.Precision(compute, parse.GetValue(computeArguments.DType)!), BenchJson.Ceiling(matmul, compute.DType));
                return 0;
            }
            foreach (var r in results)
                cli.Console.WriteLine($"BLIP-large {imageSize}², batch {r.BatchSize}, greedy {r.GeneratedTokens} tokens, {compute.Describe()} on {compute.Device.type}: {r.ImagesPerSecond:F3} images/s ({r.Seconds / r.Images:F2} s/image, {r.Images} images), {gflop * r.ImagesPerSecond / ceiling:P0} of the {ComputeOptions.DTypeName(compute.DType)} matmul ceiling ({gflop:F0} GFLOP/image)");
            return 0;
        });
        return command;
    }
}
