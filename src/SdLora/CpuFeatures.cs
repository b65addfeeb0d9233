using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace SdLora;

/// <summary>
/// What the CPU says about itself: its model name and the instruction-set flags that decide which kernels are fast
/// (AVX2, AVX-512, AVX512-BF16, AMX). Informational and part of the probe cache key: the speed decision itself is
/// measured (<see cref="CpuKernelProbe"/>), because a flag does not say whether libtorch uses it (and the environment
/// can restrict libtorch's kernels: <c>ATEN_CPU_CAPABILITY</c>, <c>ONEDNN_MAX_CPU_ISA</c>).
/// </summary>
/// <param name="Model">The model name (<c>model name</c> in /proc/cpuinfo), or the architecture where unknown.</param>
/// <param name="Flags">The relevant flags the CPU reports, lower case as Linux spells them, sorted.</param>
/// <param name="LogicalCores">Logical processors visible to this process.</param>
public sealed record CpuFeatures(string Model, IReadOnlyList<string> Flags, int LogicalCores)
{
    /// <summary>The flags that matter for the kernels sdlora runs (Linux /proc/cpuinfo spelling).</summary>
    public static IReadOnlyList<string> RelevantFlags { get; } =
    [
        "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
        "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "avx_vnni", "asimd", "bf16", "sve", "sme",
    ];

    public bool Has(string flag) => Flags.Contains(flag, StringComparer.OrdinalIgnoreCase);

    /// <summary>bf16 arithmetic in hardware: AVX512-BF16 or AMX-BF16 (x86), the BF16 extension (Arm).</summary>
    public bool HasBf16Hardware => Has("avx512_bf16") || Has("amx_bf16") || Has("bf16");

    /// <summary>One line: model, cores and the relevant flags.</summary>
    public string Summary => $"{Model}, {LogicalCores} logical cores, {(Flags.Count > 0 ? string.Join(" ", Flags) : "no vector flags found")}";

    /// <summary>Reads this machine's CPU: /proc/cpuinfo on Linux, else the CPUID bits .NET exposes.</summary>
    public static CpuFeatures Detect()
    {
        const string cpuinfo = "/proc/cpuinfo";
        try
        {
            if (File.Exists(cpuinfo)) return FromCpuInfo(File.ReadAllText(cpuinfo), Environment.ProcessorCount);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return FromIntrinsics();
    }

    /// <summary>Parses the text of /proc/cpuinfo (the first processor's entry): model name and flags (x86) or Features (Arm).</summary>
    public static CpuFeatures FromCpuInfo(string text, int logicalCores)
    {
        string? model = null;
        string[] flags = [];
        foreach (var raw in text.Split('\n'))
        {
            int colon = raw.IndexOf(':');
            if (colon < 0) continue;
            var key = raw[..colon].Trim();
            var value = raw[(colon + 1)..].Trim();
            if (model is null && (key == "model name" || key == "Model" || key == "Hardware")) model = value;
            else if (flags.Length == 0 && (key == "flags" || key == "Features"))
                flags = value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (model is not null && flags.Length > 0) break;
        }
        var relevant = flags.Select(f => f.ToLowerInvariant()).Where(RelevantFlags.Contains).Distinct().Order(StringComparer.Ordinal).ToList();
        return new CpuFeatures(model ?? RuntimeInformation.ProcessArchitecture.ToString(), relevant, logicalCores);
    }

    /// <summary>The x86 feature bits .NET reports (no model name); other architectures get no flags.</summary>
    public static CpuFeatures FromIntrinsics()
    {
        var flags = new List<string>();
        if (Avx.IsSupported) flags.Add("avx");
        if (Avx2.IsSupported) flags.Add("avx2");
        if (Fma.IsSupported) flags.Add("fma");
        if (Avx512F.IsSupported) flags.Add("avx512f");
        if (Avx512BW.IsSupported) flags.Add("avx512bw");
        if (X86Base.IsSupported)
        {
            // CPUID leaf 7, sub-leaf 1, EAX bit 5: AVX512_BF16; leaf 7 sub-leaf 0, EDX bits 22/24: AMX-BF16 / AMX-TILE.
            var (eax1, _, _, _) = X86Base.CpuId(7, 1);
            if (Avx512F.IsSupported && (eax1 & (1 << 5)) != 0) flags.Add("avx512_bf16");
            var (_, _, _, edx0) = X86Base.CpuId(7, 0);
            if ((edx0 & (1 << 22)) != 0) flags.Add("amx_bf16");
            if ((edx0 & (1 << 24)) != 0) flags.Add("amx_tile");
        }
        flags.Sort(StringComparer.Ordinal);
        return new CpuFeatures(RuntimeInformation.ProcessArchitecture.ToString(), flags, Environment.ProcessorCount);
    }
}
