using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// Turns <c>--device</c>/<c>--dtype</c> into <see cref="ComputeOptions"/> for this machine: <c>--dtype auto</c> (the
/// default) and <c>bf16</c> on the CPU consult the CPU kernel probe, cached per machine in the user's cache folder
/// (<see cref="CpuKernelProbeCache.DefaultPath"/>), so only the first run on a machine pays its fraction of a second.
/// </summary>
public static class CliCompute
{
    public const string DTypeDescription =
        "compute precision: auto (default: bf16 where this CPU computes it faster than fp32, else fp32; see `sdlora doctor`), fp32, bf16 or fp16";

    /// <summary>
    /// Resolves the names; <paramref name="note"/> hears what auto chose and why (default: a grey line with the
    /// command's output, so standard error keeps to warnings and errors).
    /// </summary>
    public static ComputeOptions Resolve(string device, string dtype, CliContext cli, Action<string>? note = null)
    {
        note ??= new Action<string>(m => cli.Console.MarkupLineInterpolated($"[grey]{m}[/]"));
        CpuKernelProbeResult? measured = null;
        bool fromCache = false;
        var compute = ComputeOptions.Resolve(device, dtype, () =>
        {
            (measured, fromCache) = CachedProbe(cli.Cancellation);
            return measured;
        });
        if (ComputeOptions.IsAuto(dtype) && measured is { } p)
            note($"--dtype auto: {compute.Describe()} (bf16 ran at {p.Bf16Speedup:F2}x the fp32 speed in this CPU's probe{(fromCache ? ", cached" : "")}; --dtype fp32|bf16 forces a choice)");
        else if (measured is { } q && compute.CpuLowPrecision == CpuLowPrecision.Upcast)
            note($"--dtype bf16: this CPU computes bf16 at {q.Bf16Speedup:F2}x the fp32 speed, so layers compute in fp32 and keep bf16 weights (half the memory, no speed gain)");
        return compute;
    }

    /// <summary>The probe result for this machine from the user's cache, measured (and cached) when absent.</summary>
    public static (CpuKernelProbeResult Result, bool FromCache) CachedProbe(CancellationToken ct) =>
        new CpuKernelProbeCache(CpuKernelProbeCache.DefaultPath).GetOrMeasure(ct);

    /// <summary>The probe result for this machine (cached), for commands that report it.</summary>
    public static (CpuKernelProbeResult Result, bool FromCache, CpuProbeKey Key) Probe(CancellationToken ct, bool remeasure = false)
    {
        var key = CpuKernelProbeCache.CurrentKey();
        var cache = new CpuKernelProbeCache(CpuKernelProbeCache.DefaultPath);
        if (remeasure)
        {
            var fresh = CpuKernelProbe.Measure(null, ct);
            try { cache.Write(key, fresh); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            return (fresh, false, key);
        }
        var (result, fromCache) = cache.GetOrMeasure(key, () => CpuKernelProbe.Measure(null, ct));
        return (result, fromCache, key);
    }
}
