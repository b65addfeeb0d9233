using System.Reflection;
using SdLora.Tests;
using TorchSharp;
using Xunit.Sdk;

[assembly: TestThreads]

namespace SdLora.Tests;

/// <summary>
/// Runs every test with the torch intra-op thread count named by <c>SDLORA_TEST_THREADS</c> (unset: torch's default).
/// CPUs and thread counts sum in different orders, so CI runs the suite with 1 and with 2 threads
/// (<c>.ci/run</c>). libtorch's OpenMP thread count is per OS thread (new threads copy the last value set), so it
/// is set again on each test's own thread before the test runs: a test that changed it cannot leak its choice.
/// </summary>
[AttributeUsage(AttributeTargets.Assembly)]
public sealed class TestThreadsAttribute : BeforeAfterTestAttribute
{
    public const string Variable = "SDLORA_TEST_THREADS";

    private static readonly Lazy<int?> Requested = new(() =>
    {
        var text = Environment.GetEnvironmentVariable(Variable);
        if (string.IsNullOrWhiteSpace(text)) return null;
        if (!int.TryParse(text, out int n) || n < 1)
            throw new InvalidOperationException($"{Variable}='{text}' is not a thread count: use a whole number >= 1, or leave it unset for torch's default");
        return n;
    });

    /// <summary>The thread count asked for, or null when <c>SDLORA_TEST_THREADS</c> is unset.</summary>
    public static int? Threads => Requested.Value;

    // The test run is a host like the CLI: libtorch's C++ warnings would fill the log (NNPACK, on CPUs it does not support).
    private static readonly Lazy<bool> QuietLibTorchLog = new(LibTorchLog.QuietWarnings);

    public override void Before(MethodInfo methodUnderTest)
    {
        _ = QuietLibTorchLog.Value;
        // Set even when this thread has it already: threads the test starts copy the last value set by any thread.
        if (Threads is int n) torch.set_num_threads(n);
    }
}
