using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>A layer whose bf16/fp16 arithmetic on the CPU follows a <see cref="SdLora.CpuLowPrecision"/> policy.</summary>
public interface ICpuLowPrecisionLayer
{
    CpuLowPrecision CpuLowPrecision { get; set; }
}

/// <summary>
/// Applies the CPU low-precision policy of <see cref="ComputeOptions"/> to the heavy layers (see
/// <see cref="SdLora.CpuLowPrecision"/> for why upcasting is the default). Stateless: each layer carries its policy.
/// </summary>
public static class CpuPrecision
{
    /// <summary>True when a layer under <paramref name="policy"/> fed <paramref name="input"/> should compute in fp32.</summary>
    public static bool ShouldUpcast(Tensor input, CpuLowPrecision policy) =>
        policy == CpuLowPrecision.Upcast && input.device_type == DeviceType.CPU &&
        (input.dtype == ScalarType.BFloat16 || input.dtype == ScalarType.Float16);

    /// <summary>Sets <paramref name="policy"/> on every layer of <paramref name="module"/> that has one.</summary>
    public static void Apply(nn.Module module, CpuLowPrecision policy)
    {
        if (module is ICpuLowPrecisionLayer self) self.CpuLowPrecision = policy;
        foreach (var (_, child) in module.named_modules())
            if (child is ICpuLowPrecisionLayer layer) layer.CpuLowPrecision = policy;
    }
}
