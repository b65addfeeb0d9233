using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// CPU precision policy for the heavy layers. CPUs without native bf16/fp16 arithmetic (AVX2 only)
/// run bf16 convolutions and matmuls one to three orders of magnitude slower than fp32, so by default
/// conv/linear layers keep their low-precision weights but compute in fp32 and cast the result back:
/// bf16 then saves memory without costing speed. Other devices are left alone.
/// </summary>
public static class CpuPrecision
{
    /// <summary>Compute bf16/fp16 conv and linear layers in fp32 on CPU (default true).</summary>
    public static bool UpcastLowPrecision { get; set; } = true;

    /// <summary>True when a layer fed <paramref name="input"/> should compute in fp32.</summary>
    public static bool ShouldUpcast(Tensor input) =>
        UpcastLowPrecision && input.device_type == DeviceType.CPU &&
        (input.dtype == ScalarType.BFloat16 || input.dtype == ScalarType.Float16);
}
