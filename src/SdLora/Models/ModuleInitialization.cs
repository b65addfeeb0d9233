namespace SdLora.Models;

/// <summary>
/// Lets a loader build a model without drawing random initial weights that it overwrites a moment later: the
/// Kaiming-uniform draws of a full SD1.5 model cost seconds on two cores (most of a load) and consume torch's global
/// random generator. Like accelerate's <c>init_empty_weights</c>, it is a scope around the construction: the setting
/// lives in the calling flow (<see cref="AsyncLocal{T}"/>), is restored when the scope ends, and is never seen by other
/// threads or jobs. Weights built inside are uninitialised memory until loaded.
/// </summary>
public static class ModuleInitialization
{
    private static readonly AsyncLocal<bool> Skipping = new();

    /// <summary>True inside <see cref="WithoutRandomInit{T}"/> on this flow: layers leave their weights unset.</summary>
    public static bool IsSkipped => Skipping.Value;

    /// <summary>Runs <paramref name="create"/> with random initialisation off for the layers it builds.</summary>
    public static T WithoutRandomInit<T>(Func<T> create)
    {
        bool previous = Skipping.Value;
        Skipping.Value = true;
        try { return create(); }
        finally { Skipping.Value = previous; }
    }
}
