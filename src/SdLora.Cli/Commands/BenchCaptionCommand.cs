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
        var command = new Command(name, "measure BLIP-large captioning speed (random weights)");
        foreach (var o in new Option[] { batchSizes, images, tokens, size }) command.Options.Add(o);
        computeArguments.AddTo(command);
        command.SetAction(parse =>
        {
            BenchHost.Start();
            var sizes = parse.GetValue(batchSizes)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.TryParse(s, out var b) && b > 0 ? b : throw new SdLoraException($"--batch-sizes: '{s}' is not a positive number")).ToArray();
            int imageSize = parse.GetValue(size);
            var config = BlipConfig.Large with { Vision = BlipConfig.Large.Vision with { ImageSize = imageSize } };
            var compute = computeArguments.Read(parse, cli);
            var results = BlipBenchmark.Run(config, sizes, parse.GetValue(images), parse.GetValue(tokens), compute, new SdLora.SyncProgress<string>(cli.Console.WriteLine), cli.Cancellation);
            foreach (var r in results)
                cli.Console.WriteLine($"BLIP-large {imageSize}², batch {r.BatchSize}, greedy {r.GeneratedTokens} tokens, {ComputeOptions.DTypeName(compute.DType)} on {compute.Device.type}: {r.ImagesPerSecond:F3} images/s ({r.Seconds / r.Images:F2} s/image, {r.Images} images)");
            return 0;
        });
        return command;
    }
}
