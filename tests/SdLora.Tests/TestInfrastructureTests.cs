using TorchSharp;
using Xunit;

namespace SdLora.Tests;

public class TestInfrastructureTests
{
    [Fact]
    public void Tests_run_with_the_torch_thread_count_of_SDLORA_TEST_THREADS()
    {
        int expected = TestThreadsAttribute.Threads ?? torch.get_num_threads();
        Assert.Equal(expected, torch.get_num_threads());
        // A thread the test starts itself inherits the count too (libtorch copies the last value set to new threads).
        int onOtherThread = 0;
        var t = new Thread(() => onOtherThread = torch.get_num_threads());
        t.Start();
        t.Join();
        Assert.Equal(expected, onOtherThread);
    }
}
