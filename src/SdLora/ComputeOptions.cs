using TorchSharp;
using static TorchSharp.torch;

namespace SdLora;

/// <summary>Where and in which precision tensors are computed. Flows through every model and pipeline API.</summary>
public sealed record ComputeOptions(Device Device, ScalarType DType)
{
    public static ComputeOptions CpuFloat32 { get; } = new(CPU, ScalarType.Float32);

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

    public static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "fp32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "fp16",
        _ => t.ToString(),
    };
}
