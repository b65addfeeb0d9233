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
        _ => throw new SdLoraException($"unknown dtype '{name}': use fp32, bf16 or fp16"),
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
