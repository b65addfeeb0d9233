using TorchSharp;
using static TorchSharp.torch;

namespace SdLora;

/// <summary>
/// Where and in which precision tensors are computed. Flows through every model and pipeline API; models take it
/// at load (<see cref="Pipelines.StableDiffusionModel.To{T}"/>), so two models in one process may differ.
/// </summary>
/// <param name="Device">cpu, cuda, cuda:N.</param>
/// <param name="DType">The dtype weights are stored and activations passed in: fp32, bf16 or fp16.</param>
/// <param name="CpuLowPrecision">How bf16/fp16 conv and linear layers compute on the CPU (ignored for fp32 and other devices).</param>
public sealed record ComputeOptions(Device Device, ScalarType DType, CpuLowPrecision CpuLowPrecision = CpuLowPrecision.Upcast)
{
    public static ComputeOptions CpuFloat32 { get; } = new(CPU, ScalarType.Float32);

    /// <summary>
    /// The policy a measured probe recommends: <see cref="CpuLowPrecision.Native"/> where a low-precision matmul of
    /// model-like shapes ran at least 10 % faster than the same matmul in fp32 (the speed an upcast layer gets), so
    /// that measurement noise does not flip the choice; <see cref="CpuLowPrecision.Upcast"/> otherwise.
    /// </summary>
    /// <param name="fp32GFlopsPerSecond">Measured fp32 throughput.</param>
    /// <param name="lowPrecisionGFlopsPerSecond">Measured throughput of the same work in bf16/fp16.</param>
    public static CpuLowPrecision ChooseCpuLowPrecision(double fp32GFlopsPerSecond, double lowPrecisionGFlopsPerSecond)
    {
        if (!(fp32GFlopsPerSecond > 0) || !(lowPrecisionGFlopsPerSecond >= 0))
            throw new ArgumentOutOfRangeException(nameof(fp32GFlopsPerSecond), $"throughputs must be positive measurements, got fp32 {fp32GFlopsPerSecond} and low precision {lowPrecisionGFlopsPerSecond}");
        return lowPrecisionGFlopsPerSecond >= 1.1 * fp32GFlopsPerSecond ? CpuLowPrecision.Native : CpuLowPrecision.Upcast;
    }

    /// <summary>Parses the user-facing names: device <c>cpu</c>, <c>cuda</c>, <c>cuda:N</c>; dtype <c>fp32</c>, <c>bf16</c>, <c>fp16</c>.</summary>
    public static ComputeOptions Parse(string device, string dtype) => new(ParseDevice(device), ParseDType(dtype));

    /// <summary>True for the dtype name that asks sdlora to choose (<c>auto</c>).</summary>
    public static bool IsAuto(string dtype) => dtype.Trim().Equals("auto", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Resolves the user-facing names, <c>auto</c> included, into options for this machine. The CPU probe is consulted
    /// only where it decides something: <c>auto</c> on the CPU, and <c>bf16</c> on the CPU (native or upcast kernels).
    /// </summary>
    /// <param name="device">cpu, cuda, cuda:N.</param>
    /// <param name="dtype">auto, fp32, bf16 or fp16.</param>
    /// <param name="probe">
    /// How this CPU's bf16 speed is measured (usually <see cref="CpuKernelProbeCache.GetOrMeasure(CancellationToken)"/>);
    /// null: no measurement, so <c>auto</c> means fp32 and bf16 layers upcast (the safe choices everywhere).
    /// </param>
    public static ComputeOptions Resolve(string device, string dtype, Func<CpuKernelProbeResult>? probe)
    {
        var dev = ParseDevice(device);
        if (dev.type != DeviceType.CPU)
            return new(dev, IsAuto(dtype) ? ScalarType.Float16 : ParseDType(dtype)); // GPUs: fp16, what diffusers users run
        if (IsAuto(dtype)) return probe is null ? CpuFloat32 : ForCpu(probe());
        var t = ParseDType(dtype);
        // fp16 is not probed: without AVX512-FP16 its convolutions are emulated (hundreds of times slower), so it always upcasts.
        if (t == ScalarType.BFloat16 && probe is not null) return new(CPU, t, probe().Bf16Policy);
        return new(CPU, t);
    }

    /// <summary>
    /// <c>--dtype auto</c> on the CPU, from a measurement: bf16 computed natively where the probe found bf16 at least
    /// 10 % faster than fp32 (CPUs with AVX512-BF16 or AMX), fp32 elsewhere (bf16 there would only save memory, at a
    /// cost in speed).
    /// </summary>
    public static ComputeOptions ForCpu(CpuKernelProbeResult probe) =>
        probe.Bf16Policy == CpuLowPrecision.Native ? new(CPU, ScalarType.BFloat16, CpuLowPrecision.Native) : CpuFloat32;

    /// <summary>A short description: <c>bf16 (native kernels)</c>, <c>bf16 (fp32 arithmetic)</c>, <c>fp32</c>, plus the device when not the CPU.</summary>
    public string Describe()
    {
        var name = DTypeName(DType);
        if (Device.type == DeviceType.CPU && DType != ScalarType.Float32)
            name += CpuLowPrecision == CpuLowPrecision.Native ? " (native kernels)" : " (fp32 arithmetic)";
        return Device.type == DeviceType.CPU ? name : $"{name} on {Device}";
    }

    public static Device ParseDevice(string name)
    {
        var n = name.Trim().ToLowerInvariant();
        if (n == "cpu") return CPU;
        if (n == "cuda" || n.StartsWith("cuda:"))
        {
            if (!cuda.is_available())
                throw new SdLoraException($"device '{name}' asked for, but no CUDA device is usable here: this build references TorchSharp-cpu; reference a TorchSharp CUDA package (libtorch-cuda) and use a machine with an NVIDIA GPU, or pass --device cpu");
            return n == "cuda" ? CUDA : new Device(n);
        }
        throw new SdLoraException($"unknown device '{name}': use cpu, cuda or cuda:N");
    }

    public static ScalarType ParseDType(string name) => name.Trim().ToLowerInvariant() switch
    {
        "fp32" or "float32" or "float" or "f32" => ScalarType.Float32,
        "bf16" or "bfloat16" => ScalarType.BFloat16,
        "fp16" or "float16" or "half" or "f16" => ScalarType.Float16,
        _ => throw new SdLoraException($"unknown dtype '{name}': use auto, fp32, bf16 or fp16"),
    };

    /// <summary>Parses the user-facing names of <see cref="SdLora.CpuLowPrecision"/>: <c>upcast</c>, <c>native</c>.</summary>
    public static CpuLowPrecision ParseCpuLowPrecision(string name) => name.Trim().ToLowerInvariant() switch
    {
        "upcast" => CpuLowPrecision.Upcast,
        "native" => CpuLowPrecision.Native,
        _ => throw new SdLoraException($"unknown CPU low-precision policy '{name}': use upcast or native"),
    };

    public static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "fp32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "fp16",
        _ => t.ToString(),
    };
}

/// <summary>How a bf16/fp16 model computes on the CPU. Part of <see cref="ComputeOptions"/>.</summary>
public enum CpuLowPrecision
{
    /// <summary>
    /// Conv and linear layers keep their low-precision weights but compute in fp32 and cast the result back: CPUs
    /// without native bf16/fp16 arithmetic (AVX2 only) run low-precision convolutions and matmuls one to three orders
    /// of magnitude slower than fp32, so this saves memory without costing speed. Attention uses the fused kernel in
    /// the model's dtype (it accumulates in fp32 and is as fast as fp32 there). The default.
    /// </summary>
    Upcast,

    /// <summary>Every layer computes in the model's dtype: the fastest choice on CPUs with bf16 arithmetic (AVX512-BF16, AMX).</summary>
    Native,
}
