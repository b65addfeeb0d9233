using System.Text.Json;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests;

/// <summary>
/// <c>--dtype auto</c>: the policy takes a probe result as input, so both branches (bf16 hardware, AVX2 only) are
/// checked on any machine; the probe cache survives corruption; CPU flags parse from /proc/cpuinfo text.
/// </summary>
public class ComputeSelectionTests
{
    /// <summary>A probe result with bf16 at <paramref name="speedup"/> times the fp32 speed (CPU and wall time alike).</summary>
    private static CpuKernelProbeResult Probe(double speedup, double fp32 = 150) =>
        new(fp32, fp32 * speedup,
        [
            new KernelSpeed("conv", "fp32", 1.0, 1.0 / fp32, 2.0 / fp32, Round: 2),
            new KernelSpeed("conv", "bf16", 1.0, 1.0 / (fp32 * speedup), 2.0 / (fp32 * speedup), Round: 2),
        ], Threads: 2, Seconds: 0.1);

    private static Func<CpuKernelProbeResult> Counting(CpuKernelProbeResult result, Action onCall) => () => { onCall(); return result; };

    [Fact]
    public void Auto_picks_native_bf16_where_the_probe_found_bf16_faster()
    {
        var c = ComputeOptions.Resolve("cpu", "auto", () => Probe(2.4));
        Assert.Equal(ScalarType.BFloat16, c.DType);
        Assert.Equal(CpuLowPrecision.Native, c.CpuLowPrecision);
        Assert.Equal(DeviceType.CPU, c.Device.type);
        Assert.Equal("bf16 (native kernels)", c.Describe());
    }

    [Theory]
    [InlineData(0.01)]  // AVX2 only: bf16 emulated
    [InlineData(1.05)]  // within noise of fp32
    [InlineData(0)]     // bf16 not measured (no bf16 instructions)
    public void Auto_picks_fp32_where_bf16_is_not_clearly_faster(double speedup)
    {
        var c = ComputeOptions.Resolve("cpu", "AUTO", () => Probe(speedup));
        Assert.Equal(ScalarType.Float32, c.DType);
        Assert.Equal("fp32", c.Describe());
    }

    [Fact]
    public void Forced_bf16_computes_natively_only_where_the_probe_says_so()
    {
        var fast = ComputeOptions.Resolve("cpu", "bf16", () => Probe(2.4));
        var slow = ComputeOptions.Resolve("cpu", "bf16", () => Probe(0.01));
        Assert.Equal((ScalarType.BFloat16, CpuLowPrecision.Native), (fast.DType, fast.CpuLowPrecision));
        Assert.Equal((ScalarType.BFloat16, CpuLowPrecision.Upcast), (slow.DType, slow.CpuLowPrecision));
        Assert.Equal("bf16 (fp32 arithmetic)", slow.Describe());
    }

    [Fact]
    public void Forced_fp32_and_fp16_never_run_the_probe()
    {
        int calls = 0;
        var probe = Counting(Probe(3), () => calls++);
        Assert.Equal(ComputeOptions.CpuFloat32, ComputeOptions.Resolve("cpu", "fp32", probe));
        var fp16 = ComputeOptions.Resolve("cpu", "fp16", probe);
        Assert.Equal((ScalarType.Float16, CpuLowPrecision.Upcast), (fp16.DType, fp16.CpuLowPrecision));
        Assert.Equal(0, calls);
    }

    [Fact]
    public void Without_a_probe_auto_is_fp32_and_bf16_upcasts()
    {
        Assert.Equal(ComputeOptions.CpuFloat32, ComputeOptions.Resolve("cpu", "auto", null));
        Assert.Equal(CpuLowPrecision.Upcast, ComputeOptions.Resolve("cpu", "bf16", null).CpuLowPrecision);
    }

    [Fact]
    public void Unknown_dtype_names_are_a_user_error_naming_auto()
    {
        var e = Assert.Throws<SdLoraException>(() => ComputeOptions.Resolve("cpu", "int8", () => Probe(2)));
        Assert.Contains("auto, fp32, bf16 or fp16", e.Message);
    }

    [Fact]
    public void The_speedup_compares_cpu_time_of_the_deciding_round_and_falls_back_to_wall_time()
    {
        // Round 1 says bf16 is slow, round 2 (the deciding one) says 3x faster in CPU time though the wall clock was disturbed.
        var result = new CpuKernelProbeResult(100, 50,
        [
            new KernelSpeed("small", "fp32", 1, 0.01, 0.01, Round: 1),
            new KernelSpeed("small", "bf16", 1, 1.00, 1.00, Round: 1),
            new KernelSpeed("large", "fp32", 1, 0.02, 0.03, Round: 2),
            new KernelSpeed("large", "bf16", 1, 0.04, 0.01, Round: 2),
        ], 2, 0.1);
        Assert.Equal(3.0, result.Bf16Speedup, 9);
        Assert.Equal(CpuLowPrecision.Native, result.Bf16Policy);

        var wallOnly = new CpuKernelProbeResult(100, 250, [new KernelSpeed("k", "fp32", 1, 0.01), new KernelSpeed("k", "bf16", 1, 0.004)], 1, 0.1);
        Assert.Equal(2.5, wallOnly.Bf16Speedup, 9);
    }

    [Fact]
    public void Training_dtype_auto_validates_and_mixed_precision_wins_over_it()
    {
        var auto = new TrainingConfig();
        Assert.Equal("auto", auto.Dtype);
        auto.Validate(requirePaths: false);
        Assert.Equal(ScalarType.BFloat16, auto.ResolveCompute(() => Probe(2)).DType);
        Assert.Equal(ScalarType.Float32, auto.ResolveCompute(() => Probe(0.02)).DType);
        var mixed = new TrainingConfig { Dtype = "fp32", MixedPrecision = "bf16" };
        var c = mixed.ResolveCompute(() => Probe(0.02));
        Assert.Equal((ScalarType.BFloat16, CpuLowPrecision.Upcast), (c.DType, c.CpuLowPrecision));
        Assert.Throws<SdLoraException>(() => new TrainingConfig { Dtype = "fast" }.Validate(requirePaths: false));
    }

    [Fact]
    public void The_cache_measures_once_per_key_and_keeps_other_machines_entries()
    {
        using var dir = Fixtures.TempDir();
        var cache = new CpuKernelProbeCache(dir.File("sub/cpu-kernels.json"));
        var keyA = Key(threads: 2);
        var keyB = Key(threads: 1);
        int calls = 0;
        var (first, firstCached) = cache.GetOrMeasure(keyA, Counting(Probe(2.5), () => calls++));
        var (second, secondCached) = cache.GetOrMeasure(keyA, Counting(Probe(9), () => calls++));
        Assert.False(firstCached);
        Assert.True(secondCached);
        Assert.Equal(1, calls);
        Assert.Equal(first.Bf16GFlopsPerSecond, second.Bf16GFlopsPerSecond);
        Assert.Equal(first.Kernels, second.Kernels);

        var (other, otherCached) = cache.GetOrMeasure(keyB, Counting(Probe(0.01), () => calls++));
        Assert.False(otherCached);
        Assert.Equal(2, calls);
        Assert.Equal(2.5, cache.TryRead(keyA)!.Bf16Speedup, 6);
        Assert.Equal(0.01, cache.TryRead(keyB)!.Bf16Speedup, 6);
        Assert.Equal(CpuLowPrecision.Upcast, other.Bf16Policy);
    }

    [Theory]
    [InlineData("{ \"Format\": 1, \"Entries\": { \"abc\": ")]              // truncated
    [InlineData("not json at all")]
    [InlineData("[1, 2, 3]")]
    [InlineData("{ \"Format\": 1, \"Entries\": null }")]
    [InlineData("")]
    public void A_corrupt_cache_file_is_measured_again_and_rewritten(string corrupt)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("cpu-kernels.json");
        File.WriteAllText(path, corrupt);
        var cache = new CpuKernelProbeCache(path);
        int calls = 0;
        var (result, cached) = cache.GetOrMeasure(Key(), Counting(Probe(2), () => calls++));
        Assert.False(cached);
        Assert.Equal(1, calls);
        Assert.Equal(2, result.Bf16Speedup, 6);
        // The rewritten file is valid and answers the next process.
        using (JsonDocument.Parse(File.ReadAllText(path))) { }
        Assert.True(cache.GetOrMeasure(Key(), Counting(Probe(5), () => calls++)).FromCache);
        Assert.Equal(1, calls);
    }

    [Fact]
    public void A_cached_entry_with_impossible_numbers_is_measured_again()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("cpu-kernels.json");
        var cache = new CpuKernelProbeCache(path);
        cache.Write(Key(), Probe(2));
        File.WriteAllText(path, File.ReadAllText(path).Replace("\"Fp32GFlopsPerSecond\": 150", "\"Fp32GFlopsPerSecond\": -1"));
        Assert.Null(cache.TryRead(Key()));
        int calls = 0;
        Assert.False(cache.GetOrMeasure(Key(), Counting(Probe(2), () => calls++)).FromCache);
        Assert.Equal(1, calls);
    }

    [Fact]
    public void An_unwritable_cache_still_answers_from_a_fresh_measurement()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllText(dir.File("blocker"), "a file where the cache folder should be");
        var cache = new CpuKernelProbeCache(Path.Combine(dir.File("blocker"), "cpu-kernels.json"));
        var (result, cached) = cache.GetOrMeasure(Key(), () => Probe(2));
        Assert.False(cached);
        Assert.Equal(2, result.Bf16Speedup, 6);
    }

    [Fact]
    public void The_cache_key_changes_with_everything_that_changes_the_answer()
    {
        var ids = new[]
        {
            Key(), Key(threads: 1), Key(flags: ["avx2", "fma"]), Key(torch: "2.11.0"), Key(env: ["ONEDNN_MAX_CPU_ISA=AVX2"]),
            Key() with { ProbeVersion = CpuKernelProbe.Version + 1 }, Key() with { CpuModel = "Intel Xeon" },
        }.Select(k => k.Id).ToList();
        Assert.Equal(ids.Count, ids.Distinct().Count());
        Assert.Equal(Key().Id, Key().Id);
        var current = CpuKernelProbeCache.CurrentKey();
        Assert.Equal(torch.get_num_threads(), current.Threads);
        Assert.Equal(torch.__version__, current.TorchVersion);
    }

    private static CpuProbeKey Key(int threads = 2, string[]? flags = null, string torch = "2.10.0", string[]? env = null) =>
        new(CpuKernelProbe.Version, "AMD EPYC", flags ?? ["avx2", "avx512_bf16", "avx512f"], torch, threads, env ?? []);

    [Fact]
    public void Cpu_flags_parse_from_proc_cpuinfo_for_avx2_avx512_bf16_and_arm()
    {
        const string avx2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx f16c avx2 fma bmi2\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu\n";
        const string bf16 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 sha_ni\n";
        const string arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes bf16 sve\n";
        var a = CpuFeatures.FromCpuInfo(avx2, 2);
        Assert.Equal("AMD EPYC 7B12", a.Model);
        Assert.Equal(["avx", "avx2", "f16c", "fma"], a.Flags);
        Assert.False(a.HasBf16Hardware);
        var b = CpuFeatures.FromCpuInfo(bf16, 2);
        Assert.True(b.HasBf16Hardware);
        Assert.Contains("avx512_bf16", b.Flags);
        Assert.DoesNotContain("sha_ni", b.Flags);
        var c = CpuFeatures.FromCpuInfo(arm, 4);
        Assert.True(c.HasBf16Hardware);
        Assert.Equal(["asimd", "bf16", "sve"], c.Flags);
        Assert.Contains("4 logical cores", c.Summary);
    }

    [Fact]
    public void The_probe_reports_fp32_speed_and_either_a_bf16_speed_or_why_not()
    {
        var cpu = CpuFeatures.Detect();
        var result = CpuKernelProbe.Measure(cpu);
        Assert.True(result.Fp32GFlopsPerSecond > 0);
        Assert.Equal(torch.get_num_threads(), result.Threads);
        Assert.All(result.Kernels, k => Assert.True(k.Seconds > 0 && k.GFlop > 0, k.Kernel));
        Assert.Contains(result.Kernels, k => k.DType == "fp32");
        if (result.Bf16GFlopsPerSecond > 0) Assert.Contains(result.Kernels, k => k.DType == "bf16");
        else Assert.Contains("not measured", result.Note);
        // Whatever it measured, the policy gives one of the two answers: never a slow one for a CPU without bf16.
        var auto = ComputeOptions.ForCpu(result);
        if (!cpu.HasBf16Hardware && (System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64))
            Assert.Equal(ScalarType.Float32, auto.DType);
    }
}
