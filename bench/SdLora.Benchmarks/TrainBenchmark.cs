using System.Diagnostics;
using SdLora.Lora;
using SdLora.Models;
using SdLora.Sampling;
using SdLora.Training;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Benchmarks;

/// <summary>
/// One training step of a full-size UNet with random weights: batch 1, 77-token context; a LoRA on attention, or with
/// <see cref="FullFineTune"/> every UNet weight (DreamBooth) with <see cref="Optimizer"/> (AdamW or Adafactor).
/// </summary>
public sealed record TrainBenchmarkOptions(
    ScalarType DType = ScalarType.Float32,
    bool GradientCheckpointing = false,
    int Steps = 1,
    int WarmupSteps = 1,
    int LatentSize = 64,
    int Batch = 1,
    int Rank = 16,
    int ContextTokens = 77,
    CpuLowPrecision CpuLowPrecision = CpuLowPrecision.Upcast,
    UNetConfig? Config = null,
    bool FullFineTune = false,
    string Optimizer = "AdamW");

public sealed record TrainBenchmarkResult(
    TrainBenchmarkOptions Options,
    int Threads,
    double ForwardGFlop,
    long LoraParameters,
    IReadOnlyList<double> StepSeconds,
    IReadOnlyList<MatmulThroughput> Matmul,
    long PeakRssBytes,
    long ModelRssBytes)
{
    /// <summary>
    /// With the base weights frozen, backward only propagates activations (no weight gradients for the base), about one
    /// forward's work: a step is ~2 forwards, ~3 with checkpointing (each block's forward runs again in backward). A full
    /// fine-tune's backward also computes every weight gradient: ~3 forwards, ~4 with checkpointing.
    /// </summary>
    public double TrainGFlop => ForwardGFlop * ((Options.FullFineTune ? 3 : 2) + (Options.GradientCheckpointing ? 1 : 0));
    public double SecondsPerStep => StepSeconds.Average();
    public double GFlopsPerSecond => TrainGFlop / SecondsPerStep;
    public double PeakSameDTypeGFlops => Matmul.Where(m => m.DType == Options.DType).Max(m => m.GFlopsPerSecond);
    public double PeakAnyGFlops => Matmul.Max(m => m.GFlopsPerSecond);
    public double EfficiencySameDType => GFlopsPerSecond / PeakSameDTypeGFlops;
    public double EfficiencyAny => GFlopsPerSecond / PeakAnyGFlops;
}

/// <summary>
/// Times forward + backward + optimizer step of a LoRA on the SD1.5 UNet, or of the whole UNet (DreamBooth), through the
/// training loop's <see cref="DiffusionLoss"/>, and reads it as an efficiency against this process's dense matmul rate
/// (<see cref="UNetBenchmark.MeasureCeiling"/>). Runs with the caller's torch thread count and random generator (the host sets them).
/// </summary>
public static class TrainBenchmark
{
    public static TrainBenchmarkResult Run(TrainBenchmarkOptions options, IReadOnlyList<MatmulThroughput> matmul,
        IProgress<string>? progress = null, CancellationToken cancellationToken = default)
    {
        var config = options.Config ?? UNetConfig.StableDiffusion15;
        ResetPeakRss();

        string label = (options.FullFineTune ? $"full fine-tune, {options.Optimizer}, " : "") +
            $"{ComputeOptions.DTypeName(options.DType)}, checkpointing {(options.GradientCheckpointing ? "on" : "off")}";
        progress?.Report($"building UNet ({label}, random weights)" + (options.FullFineTune ? "" : $" + LoRA rank {options.Rank}"));
        using var unet = new UNet2DConditionModel(config);
        if (options.DType != ScalarType.Float32) unet.to(options.DType);
        CpuPrecision.Apply(unet, options.CpuLowPrecision);
        foreach (var p in unet.parameters()) p.requires_grad = options.FullFineTune;
        using var network = options.FullFineTune ? null : LoraNetwork.Create(unet, null, new LoraNetworkOptions
        {
            Rank = options.Rank, Alpha = options.Rank, TrainTextEncoder = false, UnetTargets = LoraUnetTargets.Attention,
        });
        network?.Attach();
        var parameters = network?.Parameters().ToList() ?? unet.parameters().ToList();
        var groups = new[] { new ParamGroup("unet", parameters, options.FullFineTune ? 2e-6 : 1e-4) };
        using TrainingOptimizer optimizer = options.Optimizer.Equals("adafactor", StringComparison.OrdinalIgnoreCase) ? new Adafactor(groups) : new AdamW(groups);
        unet.GradientCheckpointing = options.GradientCheckpointing;
        unet.train();
        long modelRss = CurrentRssBytes();
        progress?.Report($"{label}: model{(options.FullFineTune ? "" : " + LoRA")} built, RSS {modelRss / 1048576.0:F0} MiB");

        int size = options.LatentSize;
        double gflop = UNetFlops.Forward(config, options.Batch, size, size, options.ContextTokens) / 1e9;
        var schedule = NoiseSchedule.StableDiffusion1;
        using var latents = torch.randn(options.Batch, config.InChannels, size, size);
        using var noise = torch.randn(options.Batch, config.InChannels, size, size);
        using var timesteps = torch.randint(0, 1000, [options.Batch], ScalarType.Int64);
        using var context = torch.randn(options.Batch, options.ContextTokens, config.CrossAttentionDim);
        var steps = new List<double>();
        for (int i = 0; i < options.WarmupSteps + options.Steps; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            bool warmup = i < options.WarmupSteps;
            progress?.Report(warmup ? $"{label}: warm-up step {i + 1}/{options.WarmupSteps}" : $"{label}: timed step {i - options.WarmupSteps + 1}/{options.Steps}");
            using var scope = torch.NewDisposeScope();
            var sw = Stopwatch.StartNew();
            using (var loss = DiffusionLoss.Compute(unet, schedule, latents, noise, timesteps, context, null, new DiffusionLossOptions(), options.DType))
                loss.Loss.backward();
            GradientClipping.ClipGradNorm(parameters, 1.0);
            optimizer.Step();
            optimizer.ZeroGrad();
            sw.Stop();
            if (!warmup) steps.Add(sw.Elapsed.TotalSeconds);
        }
        return new TrainBenchmarkResult(options, torch.get_num_threads(), gflop, parameters.Sum(p => p.numel()), steps, matmul, UNetBenchmark.PeakRssBytes(), modelRss);
    }

    /// <summary>Current resident set size (VmRSS), or 0 where /proc is unavailable.</summary>
    public static long CurrentRssBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmRSS:")) return long.Parse(line["VmRSS:".Length..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return 0;
    }

    /// <summary>Resets this process's peak RSS (Linux: <c>clear_refs</c> 5) so each configuration reports its own peak.</summary>
    private static void ResetPeakRss()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
