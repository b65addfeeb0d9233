using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// Lets a loader build a model without drawing random initial weights that it overwrites a moment later: the
/// Kaiming-uniform draws of a full SD1.5 model cost seconds on two cores (most of a load) and consume torch's global
/// random generator. Like accelerate's <c>init_empty_weights</c>, it is a scope around the construction: the setting
/// lives in the calling flow (<see cref="AsyncLocal{T}"/>), is restored when the scope ends, and is never seen by other
/// threads or jobs. Weights built inside are uninitialised memory until loaded. A scope may also name the dtype the
/// weights will be loaded into, so the large layers allocate them in it directly instead of in fp32 that a conversion
/// would then read and rewrite (most of a bf16 load's time before).
/// </summary>
public static class ModuleInitialization
{
    private static readonly AsyncLocal<bool> Skipping = new();
    private static readonly AsyncLocal<ScalarType?> EmptyDType = new();

    /// <summary>True inside <see cref="WithoutRandomInit{T}"/> on this flow: layers leave their weights unset.</summary>
    public static bool IsSkipped => Skipping.Value;

    /// <summary>The dtype layers give their (unset) weights inside the scope: fp32 unless the scope names another.</summary>
    public static ScalarType WeightDType => Skipping.Value && EmptyDType.Value is { } d ? d : ScalarType.Float32;

    /// <summary>Runs <paramref name="create"/> with random initialisation off for the layers it builds.</summary>
    /// <param name="dtype">The dtype the weights will be loaded into; layers that honour it allocate theirs in it.</param>
    public static T WithoutRandomInit<T>(Func<T> create, ScalarType? dtype = null)
    {
        bool previous = Skipping.Value;
        var previousDType = EmptyDType.Value;
        Skipping.Value = true;
        EmptyDType.Value = dtype;
        try { return create(); }
        finally
        {
            Skipping.Value = previous;
            EmptyDType.Value = previousDType;
        }
    }
}
