using System.Diagnostics;
using SdLora.Models;
using SdLora.Pipelines;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Benchmarks;

/// <summary>What to time: the full-size SD VAE with random weights, one image, decode (and encode) at <see cref="Size"/>.</summary>
/// <param name="Tiling">null: untiled; else tiled with these tiles (a latent that fits in one tile is decoded untiled anyway).</param>
public sealed record VaeBenchmarkOptions(ComputeOptions Compute, int Size = 512, int Repeats = 1, bool Encode = true, VaeTiling? Tiling = null);

/// <summary>Seconds, FLOPs and memory of one VAE direction.</summary>
public sealed record VaePhaseResult(string Phase, double GFlop, IReadOnlyList<double> Seconds, long PeakRssBytes)
{
    public double SecondsPerImage => Seconds.Min();
    public double GFlopsPerSecond => GFlop / SecondsPerImage;
}

public sealed record VaeBenchmarkResult(VaeBenchmarkOptions Options, int Threads, IReadOnlyList<VaePhaseResult> Phases,
    IReadOnlyList<MatmulThroughput> Matmul, long ModelRssBytes)
{
    public double CeilingGFlops => Matmul.Where(m => m.DType == Options.Compute.DType).Max(m => m.GFlopsPerSecond);
    public double Efficiency(VaePhaseResult phase) => phase.GFlopsPerSecond / CeilingGFlops;
}

/// <summary>
/// Times VAE decode (the last step of every generated image) and encode (latent caching before training) of a full-size
/// SD1.5 VAE with random weights, the way the pipelines call them, with each direction's peak RSS (VmHWM reset before it)
/// and its efficiency against the same-dtype matmul ceiling measured in the same process.
/// </summary>
public static class VaeBenchmark
{
    public static VaeBenchmarkResult Run(VaeBenchmarkOptions o, IProgress<string>? progress = null, CancellationToken ct = default)
    {
        progress?.Report("measuring dense matmul throughput");
        var matmul = UNetBenchmark.MeasureCeiling([o.Compute.DType], ct);
        var config = AutoencoderKLConfig.StableDiffusion15;
        progress?.Report($"building the SD1.5 VAE ({o.Compute.Describe()}, random weights)");
        using var vae = StableDiffusionModel.To(new AutoencoderKL(config), o.Compute);
        vae.eval();
        GC.Collect();
        long modelRss = TrainBenchmark.CurrentRssBytes();
        int lat = o.Size / 8;
        var phases = new List<VaePhaseResult>();
        using var noGrad = torch.no_grad();
        using var generator = new Generator(7, CPU);

        phases.Add(Time("decode", VaeFlops.Decode(config, 1, lat, lat) / 1e9, () =>
        {
            var latents = (torch.randn([1, config.LatentChannels, lat, lat], generator: generator) / config.ScalingFactor).to(o.Compute.DType);
            var image = o.Tiling is { } t ? t.Decode(vae, latents) : vae.Decode(latents);
            image.to(ScalarType.Float32).sum().item<float>();
        }));
        if (o.Encode)
            phases.Add(Time("encode", VaeFlops.Encode(config, 1, o.Size, o.Size) / 1e9, () =>
            {
                var image = (torch.rand([1, 3, o.Size, o.Size], generator: generator) * 2 - 1).to(o.Compute.DType);
                var posterior = o.Tiling is { } t ? t.Encode(vae, image) : vae.Encode(image);
                posterior.Mean.to(ScalarType.Float32).sum().item<float>();
            }));

        progress?.Report("measuring dense matmul throughput again");
        var best = matmul.Concat(UNetBenchmark.MeasureCeiling([o.Compute.DType], ct)).GroupBy(m => (m.Kernel, m.DType))
            .Select(g => g.MaxBy(m => m.GFlopsPerSecond)!).ToList();
        return new VaeBenchmarkResult(o, torch.get_num_threads(), phases, best, modelRss);

        VaePhaseResult Time(string phase, double gflop, Action run)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            UNetBenchmark.ResetPeakRss();
            var seconds = new List<double>();
            for (int i = 0; i < o.Repeats + 1; i++)
            {
                ct.ThrowIfCancellationRequested();
                progress?.Report(i == 0 ? $"{phase} {o.Size}x{o.Size}: warm-up" : $"{phase} {o.Size}x{o.Size}: timed run {i}/{o.Repeats}");
                using var scope = torch.NewDisposeScope();
                var sw = Stopwatch.StartNew();
                run();
                if (i > 0) seconds.Add(sw.Elapsed.TotalSeconds);
            }
            return new VaePhaseResult(phase, gflop, seconds, UNetBenchmark.PeakRssBytes());
        }
    }
}
