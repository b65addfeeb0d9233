using System.CommandLine;
using SdLora.Benchmarks;
using SdLora.Captioning;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora bench caption</c>: images per second of full-size BLIP-large (random weights).</summary>
public static class BenchCaptionCommand
{
    public static Command Create(string name = "caption")
    {
        var batchSizes = new Option<string>("--batch-sizes") { Description = "comma-separated batch sizes", DefaultValueFactory = _ => "1,8" };
        var images = new Option<int>("--images") { Description = "images per batch size (at least one batch)", DefaultValueFactory = _ => 8 };
        var tokens = new Option<int>("--tokens") { Description = "generated tokens per caption (greedy, fixed length)", DefaultValueFactory = _ => 20 };
        var size = new Option<int>("--size") { Description = "input image size", DefaultValueFactory = _ => 384 };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };
        var dtype = BenchHost.DTypeOption();
        var threads = BenchHost.ThreadsOption();
        var command = new Command(name, "measure BLIP-large captioning speed (random weights)");
        foreach (var o in new Option[] { batchSizes, images, tokens, size, device, dtype, threads }) command.Options.Add(o);
        command.SetAction((parse, cancellationToken) =>
        {
            BenchHost.Start(parse.GetValue(threads));
            var sizes = parse.GetValue(batchSizes)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.TryParse(s, out var b) && b > 0 ? b : throw new SdLoraException($"--batch-sizes: '{s}' is not a positive number")).ToArray();
            int imageSize = parse.GetValue(size);
            var config = BlipConfig.Large with { Vision = BlipConfig.Large.Vision with { ImageSize = imageSize } };
            var compute = CliCompute.Resolve(parse.GetValue(device)!, parse.GetValue(dtype)!);
            var results = BlipBenchmark.Run(config, sizes, parse.GetValue(images), parse.GetValue(tokens), compute, new SyncProgress<string>(AnsiConsole.WriteLine), cancellationToken);
            foreach (var r in results)
                AnsiConsole.WriteLine($"BLIP-large {imageSize}², batch {r.BatchSize}, greedy {r.GeneratedTokens} tokens, {ComputeOptions.DTypeName(compute.DType)} on {compute.Device.type}: {r.ImagesPerSecond:F3} images/s ({r.Seconds / r.Images:F2} s/image, {r.Images} images)");
            return Task.FromResult(0);
        });
        return command;
    }
}
