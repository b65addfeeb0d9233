using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora;

/// <summary>
/// The best time of one kernel in one dtype during a probe: wall time, and the process's CPU time (all threads; 0
/// where the OS gives none), which leaves out the time the threads spent waiting for a core on a busy machine.
/// </summary>
public sealed record KernelSpeed(string Kernel, string DType, double GFlop, double Seconds, double CpuSeconds = 0, int Round = 1)
{
    public double GFlopsPerSecond => Seconds > 0 ? GFlop / Seconds : 0;
}

/// <summary>
/// What <see cref="CpuKernelProbe.Measure"/> found: the throughput of the same SD-shaped convolution and linear work in
/// fp32 and in bf16 on this CPU, with the threads torch had.
/// </summary>
/// <param name="Fp32GFlopsPerSecond">All the probe's fp32 work over its best fp32 wall time.</param>
/// <param name="Bf16GFlopsPerSecond">The same work in bf16 over its best bf16 wall time (0: not measured).</param>
/// <param name="Kernels">Each kernel's best time, in each round the probe ran (the last round decides).</param>
/// <param name="Threads">torch's intra-op threads during the probe.</param>
/// <param name="Seconds">Wall time of the whole probe.</param>
/// <param name="Note">Why the probe stopped early, if it did (bf16 far slower on the small shapes).</param>
public sealed record CpuKernelProbeResult(double Fp32GFlopsPerSecond, double Bf16GFlopsPerSecond, IReadOnlyList<KernelSpeed> Kernels,
    int Threads, double Seconds, string? Note = null)
{
    /// <summary>
    /// How many times faster bf16 ran than fp32: the same work's CPU time in fp32 over its CPU time in bf16 where the
    /// OS reports CPU time (on a shared machine, wall time also counts the waits for a core), else the wall-time ratio.
    /// </summary>
    [JsonIgnore]
    public double Bf16Speedup
    {
        get
        {
            if (Bf16GFlopsPerSecond <= 0) return 0;
            int last = Kernels.Max(k => k.Round);
            double Cpu(string dtype) => Kernels.Where(k => k.DType == dtype && k.Round == last).Sum(k => k.CpuSeconds);
            double fp32Cpu = Cpu("fp32"), bf16Cpu = Cpu("bf16");
            return fp32Cpu > 0 && bf16Cpu > 0 ? fp32Cpu / bf16Cpu : Bf16GFlopsPerSecond / Fp32GFlopsPerSecond;
        }
    }

    /// <summary>The CPU low-precision policy this measurement recommends (see <see cref="ComputeOptions.ChooseCpuLowPrecision"/>).</summary>
    [JsonIgnore] public CpuLowPrecision Bf16Policy => ComputeOptions.ChooseCpuLowPrecision(1, Bf16Speedup);
}

/// <summary>
/// A short measurement (well under a second) of whether this CPU computes bf16 faster than fp32 through libtorch: a
/// 3x3 convolution and a linear layer of Stable Diffusion shapes, timed alternately in both dtypes, best of several
/// repeats (so a busy machine disturbs the ratio less than the absolute numbers). A small first round stops the probe
/// early where bf16 is emulated (AVX2-only CPUs run bf16 convolutions about a hundred times slower), so it never waits
/// seconds for a kernel that has already lost. Uses the caller's torch thread count and its own random generator.
/// </summary>
public static class CpuKernelProbe
{
    /// <summary>Bumped when the probe's shapes or rule change, so cached results of an older probe are not reused.</summary>
    public const int Version = 1;

    private sealed record Work(string Kernel, double GFlop, Func<ScalarType, Func<Tensor>> Prepare);

    /// <summary>Measures this CPU (see the class summary).</summary>
    /// <param name="cpu">The CPU's flags (default: detected): an x86 CPU without AVX512-BF16/AMX-BF16 gets no bf16 measurement at all.</param>
    public static CpuKernelProbeResult Measure(CpuFeatures? cpu = null, CancellationToken cancellationToken = default)
    {
        cpu ??= CpuFeatures.Detect();
        var clock = Stopwatch.StartNew();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        using var generator = new Generator(20240611, CPU);
        Tensor Random(ScalarType dtype, params long[] shape) => torch.randn(shape, ScalarType.Float32, CPU, generator: generator).to(dtype);

        Work Conv(int channels, int size) => new($"conv3x3 {channels}ch {size}x{size}", 2.0 * size * size * channels * channels * 9 / 1e9, dtype =>
        {
            var x = Random(dtype, 1, channels, size, size);
            var w = Random(dtype, channels, channels, 3, 3) * 0.05;
            return () => nn.functional.conv2d(x, w, padding: [1, 1]);
        });
        Work Linear(int tokens, int features) => new($"linear {tokens}x{features}x{features}", 2.0 * tokens * features * features / 1e9, dtype =>
        {
            var x = Random(dtype, tokens, features);
            var w = Random(dtype, features, features) * 0.05;
            return () => nn.functional.linear(x, w);
        });
        int threads = torch.get_num_threads();

        // An x86 CPU without bf16 instructions emulates bf16 (AVX2: convolutions ~100x slower than fp32): nothing to
        // measure there but the fp32 figure.
        bool x86 = RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.X86;
        if (x86 && !cpu.HasBf16Hardware)
        {
            var fp32Only = Round([Conv(320, 16), Linear(1024, 320)], [ScalarType.Float32], repeats: 6, budgetSeconds: 0.3, cancellationToken);
            return new CpuKernelProbeResult(Totals(fp32Only).Fp32, 0, fp32Only, threads, clock.Elapsed.TotalSeconds,
                "no bf16 instructions in the CPU flags (AVX512-BF16, AMX-BF16): bf16 not measured");
        }

        // Round 1, small: where bf16 is emulated anyway (a libtorch build or an environment that keeps oneDNN off
        // the bf16 instructions) it shows here at a cost of milliseconds.
        var small = Round([Conv(32, 16), Linear(256, 256)], [ScalarType.Float32, ScalarType.BFloat16], repeats: 5, budgetSeconds: 0.15, cancellationToken);
        var (fp32Small, bf16Small) = Totals(small);
        var smallResult = new CpuKernelProbeResult(fp32Small, bf16Small, small, threads, clock.Elapsed.TotalSeconds,
            "bf16 ran at under a quarter of the fp32 speed on small shapes (emulated bf16); the SD-sized shapes were skipped");
        if (smallResult.Bf16Speedup < 0.25) return smallResult;

        // Round 2: shapes of the UNet's 320-channel level (its heaviest work), a few milliseconds each.
        var large = Round([Conv(320, 16), Linear(1024, 320)], [ScalarType.Float32, ScalarType.BFloat16], repeats: 8, budgetSeconds: 0.4, cancellationToken)
            .Select(k => k with { Round = 2 }).ToList();
        var (fp32, bf16) = Totals(large);
        return new CpuKernelProbeResult(fp32, bf16, [.. small, .. large], threads, clock.Elapsed.TotalSeconds);
    }

    /// <summary>
    /// Times each work item in each dtype, alternating, after one warm-up call each; keeps each one's best time. Stops
    /// after <paramref name="repeats"/> rounds, or earlier once <paramref name="budgetSeconds"/> are spent (two rounds at least).
    /// </summary>
    private static List<KernelSpeed> Round(IReadOnlyList<Work> work, ScalarType[] dtypes, int repeats, double budgetSeconds, CancellationToken cancellationToken)
    {
        var runs = new List<(Work Work, string DType, Func<Tensor> Run)>();
        foreach (var w in work)
            foreach (var dtype in dtypes)
                runs.Add((w, ComputeOptions.DTypeName(dtype), w.Prepare(dtype)));
        var best = runs.Select(_ => double.MaxValue).ToArray();
        var bestCpu = runs.Select(_ => double.MaxValue).ToArray();
        var warmup = new double[runs.Count];
        var clock = Stopwatch.StartNew();
        double Sum(double[] times, int dtypeIndex) => Enumerable.Range(0, work.Count).Sum(w => times[w * dtypes.Length + dtypeIndex]);
        for (int rep = -1; rep < repeats && (rep < 1 || clock.Elapsed.TotalSeconds < budgetSeconds); rep++)
        {
            for (int i = 0; i < runs.Count; i++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                double cpu0 = ProcessCpuTime.Seconds();
                var sw = Stopwatch.StartNew();
                runs[i].Run().Dispose();
                double s = sw.Elapsed.TotalSeconds, cpu = ProcessCpuTime.Seconds() - cpu0;
                if (rep < 0) { warmup[i] = s; continue; }
                best[i] = Math.Min(best[i], s);
                bestCpu[i] = Math.Min(bestCpu[i], cpu);
            }
            if (dtypes.Length < 2) continue;
            // A dtype far slower than fp32 has lost; no more waiting for it. After the warm-up only when the gap is
            // huge (first calls include one-time kernel generation in both dtypes).
            if (rep < 0 && Sum(warmup, 1) > 50 * Sum(warmup, 0))
            {
                for (int i = 0; i < runs.Count; i++) { best[i] = warmup[i]; bestCpu[i] = 0; }
                break;
            }
            if (rep >= 0 && Sum(best, 1) > 4 * Sum(best, 0)) break;
        }
        return runs.Select((r, i) => new KernelSpeed(r.Work.Kernel, r.DType, r.Work.GFlop, best[i], Math.Max(0, bestCpu[i]))).ToList();
    }

    private static (double Fp32, double Bf16) Totals(IReadOnlyList<KernelSpeed> speeds)
    {
        double Rate(string dtype)
        {
            var rows = speeds.Where(s => s.DType == dtype).ToList();
            return rows.Sum(r => r.GFlop) / Math.Max(1e-12, rows.Sum(r => r.Seconds));
        }
        return (Rate("fp32"), speeds.Any(s => s.DType == "bf16") ? Rate("bf16") : 0);
    }
}

/// <summary>
/// Probe results kept per machine in the user's cache folder (<see cref="DefaultPath"/>), keyed by everything that
/// changes the answer: the probe's version, the CPU model and flags, the torch version, torch's thread count and the
/// environment variables that restrict libtorch's kernels. A missing, unreadable or corrupt file is measured again and
/// rewritten (atomically: temp file, then rename), never an error.
/// </summary>
public sealed class CpuKernelProbeCache(string path)
{
    /// <summary>Environment variables that change which kernels libtorch and oneDNN pick.</summary>
    public static IReadOnlyList<string> KernelEnvironmentVariables { get; } = ["ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE"];

    public string Path { get; } = path;

    /// <summary><c>cpu-kernels.json</c> in <see cref="UserCache.Folder"/>.</summary>
    public static string DefaultPath => System.IO.Path.Combine(UserCache.Folder, "cpu-kernels.json");

    /// <summary>The key of this process's situation (see the class summary).</summary>
    public static CpuProbeKey CurrentKey(CpuFeatures? cpu = null)
    {
        cpu ??= CpuFeatures.Detect();
        var env = KernelEnvironmentVariables.Select(v => (v, Environment.GetEnvironmentVariable(v)))
            .Where(e => !string.IsNullOrEmpty(e.Item2)).Select(e => $"{e.v}={e.Item2}").ToList();
        return new CpuProbeKey(CpuKernelProbe.Version, cpu.Model, cpu.Flags, torch.__version__, torch.get_num_threads(), env);
    }

    /// <summary>The cached result for <paramref name="key"/>, or null when there is none or the file cannot be read.</summary>
    public CpuKernelProbeResult? TryRead(CpuProbeKey key)
    {
        var file = ReadFile();
        return file?.Entries.TryGetValue(key.Id, out var entry) == true ? entry.Result : null;
    }

    /// <summary>Stores <paramref name="result"/> under <paramref name="key"/>, keeping other machines' entries of a readable file.</summary>
    public void Write(CpuProbeKey key, CpuKernelProbeResult result)
    {
        var file = ReadFile() ?? new CacheFile();
        file.Entries[key.Id] = new CacheEntry(key, result, DateTimeOffset.UtcNow);
        AtomicFile.WriteAllText(Path, JsonSerializer.Serialize(file, JsonOptions));
    }

    /// <summary>The cached result for <paramref name="key"/>, else <paramref name="measure"/>'s, which is then cached.</summary>
    /// <returns>The result and whether it came from the cache.</returns>
    public (CpuKernelProbeResult Result, bool FromCache) GetOrMeasure(CpuProbeKey key, Func<CpuKernelProbeResult> measure)
    {
        if (TryRead(key) is { } cached) return (cached, true);
        var result = measure();
        try { Write(key, result); }
        catch (IOException) { } // a read-only or full cache folder only costs the next process another probe
        catch (UnauthorizedAccessException) { }
        return (result, false);
    }

    /// <summary>This process's key, looked up or measured with <see cref="CpuKernelProbe.Measure"/>.</summary>
    public (CpuKernelProbeResult Result, bool FromCache) GetOrMeasure(CancellationToken cancellationToken = default) =>
        GetOrMeasure(CurrentKey(), () => CpuKernelProbe.Measure(null, cancellationToken));

    private CacheFile? ReadFile()
    {
        try
        {
            if (!File.Exists(Path)) return null;
            var file = JsonSerializer.Deserialize<CacheFile>(File.ReadAllText(Path), JsonOptions);
            if (file?.Entries is null) return null;
            // A hand-edited or truncated entry is as good as none.
            foreach (var (id, entry) in file.Entries.ToList())
                if (entry?.Result is not { } r || !(r.Fp32GFlopsPerSecond > 0) || !(r.Bf16GFlopsPerSecond >= 0) || r.Kernels is null)
                    file.Entries.Remove(id);
            return file;
        }
        catch (JsonException) { return null; }
        catch (NotSupportedException) { return null; }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    private sealed class CacheFile
    {
        public int Format { get; set; } = 1;
        public Dictionary<string, CacheEntry> Entries { get; set; } = [];
    }

    private sealed record CacheEntry(CpuProbeKey Key, CpuKernelProbeResult Result, DateTimeOffset MeasuredAt);
}

/// <summary>What a cached probe result is valid for; <see cref="Id"/> is a short hash of all of it.</summary>
public sealed record CpuProbeKey(int ProbeVersion, string CpuModel, IReadOnlyList<string> CpuFlags, string TorchVersion, int Threads,
    IReadOnlyList<string> Environment)
{
    [JsonIgnore]
    public string Id
    {
        get
        {
            var text = $"{ProbeVersion}|{CpuModel}|{string.Join(",", CpuFlags)}|{TorchVersion}|{Threads}|{string.Join(",", Environment)}";
            return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16].ToLowerInvariant();
        }
    }
}

/// <summary>sdlora's folder in the user's cache: <c>$SDLORA_CACHE_DIR</c>, else <c>$XDG_CACHE_HOME/sdlora</c>, else <c>~/.cache/sdlora</c> (Windows: LocalApplicationData\sdlora\cache).</summary>
public static class UserCache
{
    public static string Folder
    {
        get
        {
            if (Environment.GetEnvironmentVariable("SDLORA_CACHE_DIR") is { Length: > 0 } explicitFolder) return explicitFolder;
            if (OperatingSystem.IsWindows())
                return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "sdlora", "cache");
            if (Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg) return Path.Combine(xdg, "sdlora");
            return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "sdlora");
        }
    }
}

/// <summary>This process's CPU time (user + system, all threads) in seconds, at nanosecond resolution where the OS offers it.</summary>
internal static partial class ProcessCpuTime
{
    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out TimeSpec time);

    /// <summary>
    /// 0 where clock_gettime is not available (Windows: its process times tick every ~15 ms, too coarse for
    /// millisecond kernels), and the probe then compares wall times.
    /// </summary>
    public static double Seconds()
    {
        try
        {
            // CLOCK_PROCESS_CPUTIME_ID: 2 on Linux, 12 on macOS.
            if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
                return ClockGetTime(OperatingSystem.IsLinux() ? 2 : 12, out var t) == 0 ? t.Seconds + t.Nanoseconds * 1e-9 : 0;
            return 0;
        }
        catch (DllNotFoundException) { return 0; }
        catch (EntryPointNotFoundException) { return 0; }
    }
}
