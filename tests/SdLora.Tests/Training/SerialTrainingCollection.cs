using Xunit;

namespace SdLora.Tests.Training;

/// <summary>
/// Whole training runs set process-wide torch state (thread count, the global generator for dropout): they run on
/// their own, not in parallel with other test classes, so a resumed run is compared with the same conditions.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialTrainingCollection
{
    public const string Name = "serial training runs";
}
