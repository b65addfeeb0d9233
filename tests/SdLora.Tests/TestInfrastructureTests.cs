using TorchSharp;
using Xunit;

namespace SdLora.Tests;

/// <summary>Runs alone: in-process CLI tests set torch's thread count (the demo and toy commands choose 1), which new threads copy.</summary>
[CollectionDefinition(nameof(TestInfrastructureTests), DisableParallelization = true)]
public sealed class TorchThreadsCollection;

[Collection(nameof(TestInfrastructureTests))]
public class TestInfrastructureTests
{
    [Fact]
    public void Tests_run_with_the_torch_thread_count_of_SDLORA_TEST_THREADS()
    {
        // Unset: torch's default, whatever an earlier in-process command chose; nothing to check.
        if (TestThreadsAttribute.Threads is not int expected) return;
        Assert.Equal(expected, torch.get_num_threads());
        // A thread the test starts itself inherits the count too (libtorch copies the last value set to new threads).
        int onOtherThread = 0;
        var t = new Thread(() => onOtherThread = torch.get_num_threads());
        t.Start();
        t.Join();
        Assert.Equal(expected, onOtherThread);
    }
}
