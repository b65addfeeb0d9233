using System.Diagnostics;
using SdLora.Captioning;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Benchmarks;

/// <summary>One measured captioning run: <see cref="Images"/> images in batches of <see cref="BatchSize"/>.</summary>
public sealed record BlipBenchmarkResult(int BatchSize, int Images, int GeneratedTokens, double Seconds)
{
    public double ImagesPerSecond => Images / Seconds;
}

/// <summary>
/// Captioning speed of the full-size BLIP architecture with random weights (speed does not depend on the values):
/// preprocessing-free (random pixel values), greedy search forced to a fixed number of generated tokens.
/// </summary>
public static class BlipBenchmark
{
    public static IReadOnlyList<BlipBenchmarkResult> Run(BlipConfig config, IReadOnlyList<int> batchSizes, int imagesPerRun, int generatedTokens,
        ComputeOptions? compute = null, IProgress<string>? progress = null, CancellationToken cancellationToken = default)
    {
        compute ??= ComputeOptions.CpuFloat32;
        using var noGrad = torch.no_grad();
        progress?.Report($"building BLIP (vision {config.Vision.HiddenSize}x{config.Vision.NumHiddenLayers} at {config.Vision.ImageSize}, text {config.Text.HiddenSize}x{config.Text.NumHiddenLayers}) with random weights");
        using var model = new BlipForConditionalGeneration(config);
        model.eval();
        model.to(compute.DType).to(compute.Device);
        // [DEC] "a picture of" as bert-base-uncased ids; any ids do for timing.
        long[] prompt = [config.Text.BosTokenId, 1037 % config.Text.VocabSize, 3861 % config.Text.VocabSize, 1997 % config.Text.VocabSize];
        int length = prompt.Length + generatedTokens;
        // min = max length bans [SEP] until the end: every run generates exactly generatedTokens tokens.
        var options = new BlipGenerationOptions { MaxLength = length, MinLength = length };
        int size = config.Vision.ImageSize;

        Tensor Pixels(int batch) => torch.randn(batch, 3, size, size).to(compute.DType).to(compute.Device);

        progress?.Report("warm-up (1 image)");
        using (var scope = torch.NewDisposeScope()) BlipGenerator.Generate(model, Pixels(1), prompt, options, cancellationToken: cancellationToken);

        var results = new List<BlipBenchmarkResult>();
        foreach (int batch in batchSizes)
        {
            int runs = Math.Max(1, imagesPerRun / batch);
            double total = 0;
            for (int r = 0; r < runs; r++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                var pixels = Pixels(batch);
                var sw = Stopwatch.StartNew();
                BlipGenerator.Generate(model, pixels, prompt, options, cancellationToken: cancellationToken);
                total += sw.Elapsed.TotalSeconds;
            }
            var result = new BlipBenchmarkResult(batch, runs * batch, generatedTokens, total);
            progress?.Report($"batch {batch}: {result.Images} images in {total:F1} s = {result.ImagesPerSecond:F3} images/s");
            results.Add(result);
        }
        return results;
    }
}
