using System.Diagnostics;
using SdLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Benchmarks;

/// <summary>What to time: a full-size UNet with random weights, one CFG step = one forward of batch 2.</summary>
public sealed record UNetBenchmarkOptions(
    ScalarType DType = ScalarType.Float32,
    int Steps = 1,
    int WarmupSteps = 1,
    int LatentSize = 64,
    int Batch = 2,
    int ContextTokens = 77,
    CpuLowPrecision CpuLowPrecision = CpuLowPrecision.Upcast,
    UNetConfig? Config = null,
    bool Profile = false);

/// <summary>Dense matmul speed of one kernel on one square size.</summary>
public sealed record MatmulThroughput(string Kernel, ScalarType DType, int Size, double GFlopsPerSecond);

public sealed record UNetBenchmarkResult(
    UNetBenchmarkOptions Options,
    int Threads,
    double ForwardGFlop,
    IReadOnlyList<double> StepSeconds,
    IReadOnlyList<MatmulThroughput> Matmul,
    long PeakRssBytes,
    long ModelRssBytes,
    long ForwardPeakRssBytes,
    IReadOnlyList<ModuleTime>? Profile = null,
    double ProfiledSeconds = 0)
{
    public double SecondsPerStep => StepSeconds.Average();
    public double GFlopsPerSecond => ForwardGFlop / SecondsPerStep;
    /// <summary>Fastest dense matmul measured in this process in the benchmark's dtype.</summary>
    public double PeakSameDTypeGFlops => Matmul.Where(m => m.DType == Options.DType).Max(m => m.GFlopsPerSecond);
    /// <summary>Fastest dense matmul measured in this process in any dtype (fp32 on AVX2 CPUs).</summary>
    public double PeakAnyGFlops => Matmul.Max(m => m.GFlopsPerSecond);
    public double EfficiencySameDType => GFlopsPerSecond / PeakSameDTypeGFlops;
    public double EfficiencyAny => GFlopsPerSecond / PeakAnyGFlops;
}

/// <summary>
/// Times the SD1.5 UNet at a given resolution and compares its achieved FLOP rate with the dense
/// matmul rate this process gets on the same machine, so the number reads as an efficiency. Runs with the caller's
/// torch thread count and random generator (the host sets them).
/// </summary>
public static class UNetBenchmark
{
    public static UNetBenchmarkResult Run(UNetBenchmarkOptions options, IProgress<string>? progress = null, CancellationToken cancellationToken = default)
    {
        var config = options.Config ?? UNetConfig.StableDiffusion15;

        progress?.Report("measuring dense matmul throughput");
        var matmul = MeasureCeiling([options.DType], cancellationToken);

        progress?.Report($"building UNet ({ComputeOptions.DTypeName(options.DType)}, random weights)");
        using var unet = new UNet2DConditionModel(config);
        unet.eval();
        if (options.DType != ScalarType.Float32) unet.to(options.DType);
        CpuPrecision.Apply(unet, options.CpuLowPrecision);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long modelRss = StatusBytes("VmRSS:");
        bool peakReset = ResetPeakRss();

        int size = options.LatentSize;
        double gflop = UNetFlops.Forward(config, options.Batch, size, size, options.ContextTokens) / 1e9;
        var steps = new List<double>();
        using (torch.no_grad())
        {
            using var sample = torch.randn(options.Batch, config.InChannels, size, size).to(options.DType);
            using var context = torch.randn(options.Batch, options.ContextTokens, config.CrossAttentionDim).to(options.DType);
            using var timestep = torch.tensor(500L);
            for (int i = 0; i < options.WarmupSteps + options.Steps; i++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                bool warmup = i < options.WarmupSteps;
                progress?.Report(warmup ? $"warm-up forward {i + 1}/{options.WarmupSteps}" : $"timed forward {i - options.WarmupSteps + 1}/{options.Steps}");
                using var scope = torch.NewDisposeScope();
                var sw = Stopwatch.StartNew();
                var output = unet.forward(sample, timestep, context);
                output.sum().to(ScalarType.Float32).item<float>();
                sw.Stop();
                if (!warmup) steps.Add(sw.Elapsed.TotalSeconds);
            }
        }
        long forwardPeak = peakReset ? PeakRssBytes() : 0;
        IReadOnlyList<ModuleTime>? profile = null;
        double profiled = 0;
        if (options.Profile)
        {
            // One more forward with per-module timers (after the timed ones, so the hooks do not disturb them).
            progress?.Report("profiled forward (per-module timers)");
            using var profiler = new ModuleProfiler(unet);
            using var noGrad = torch.no_grad();
            using var scope = torch.NewDisposeScope();
            var sample = torch.randn(options.Batch, config.InChannels, size, size).to(options.DType);
            var context = torch.randn(options.Batch, options.ContextTokens, config.CrossAttentionDim).to(options.DType);
            var sw = Stopwatch.StartNew();
            unet.forward(sample, torch.tensor(500L), context).sum().to(ScalarType.Float32).item<float>();
            profiled = sw.Elapsed.TotalSeconds;
            profile = profiler.Times;
        }
        return new UNetBenchmarkResult(options, torch.get_num_threads(), gflop, steps, matmul, PeakRssBytes(), modelRss, forwardPeak, profile, profiled);
    }

    /// <summary>
    /// The dense-matmul ceiling the benchmarks compare with: <c>linear</c> and <c>mm</c> for fp32 (always) and each of
    /// <paramref name="dtypes"/>, 2048² except bf16/fp16 <c>mm</c>, which is pathologically slow on CPUs without native
    /// support and is timed at 512².
    /// </summary>
    public static List<MatmulThroughput> MeasureCeiling(IEnumerable<ScalarType> dtypes, CancellationToken cancellationToken = default)
    {
        var list = new List<MatmulThroughput>();
        foreach (var dtype in dtypes.Prepend(ScalarType.Float32).Distinct())
        {
            list.Add(MeasureMatmul("linear", dtype, 2048));
            cancellationToken.ThrowIfCancellationRequested();
            list.Add(MeasureMatmul("mm", dtype, dtype == ScalarType.Float32 ? 2048 : 512));
            cancellationToken.ThrowIfCancellationRequested();
        }
        return list;
    }

    /// <summary>GFLOP/s of a square <paramref name="size"/>² matmul through <c>torch.mm</c> ("mm") or <c>nn.functional.linear</c> ("linear").</summary>
    public static MatmulThroughput MeasureMatmul(string kernel, ScalarType dtype, int size)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var a = torch.randn(size, size).to(dtype);
        var b = torch.randn(size, size).to(dtype);
        Func<Tensor> run = kernel switch
        {
            "mm" => () => torch.mm(a, b),
            "linear" => () => nn.functional.linear(a, b),
            _ => throw new ArgumentException($"unknown matmul kernel '{kernel}'", nameof(kernel)),
        };
        run().Dispose();
        double flop = 2.0 * size * size * size;
        var sw = Stopwatch.StartNew();
        int reps = 0;
        do { run().Dispose(); reps++; } while (sw.Elapsed.TotalSeconds < 1.0 && reps < 20);
        return new MatmulThroughput(kernel, dtype, size, flop * reps / sw.Elapsed.TotalSeconds / 1e9);
    }

    /// <summary>Peak resident set size of this process (VmHWM; since the last <see cref="ResetPeakRss"/>), or 0 where /proc is unavailable.</summary>
    public static long PeakRssBytes() => StatusBytes("VmHWM:");

    /// <summary>Resets VmHWM to the current RSS (Linux: writing 5 to /proc/self/clear_refs); false where that is not possible.</summary>
    public static bool ResetPeakRss()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); return true; }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    private static long StatusBytes(string field)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(field))
                    return long.Parse(line[field.Length..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return 0;
    }
}
