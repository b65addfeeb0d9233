using SdLora.Lora;
using SdLora.Pipelines;
using Xunit;

namespace SdLora.Tests.Pipelines;

public class ModelHostTests
{
    private static string Tiny => Fixtures.CopiedSet("tiny-sd15");
    private static string TinyLdm => Fixtures.CopiedSet("tiny-sd15-ldm.safetensors");
    private static string LoraPath => Fixtures.CopiedSet("lora_kohya_tiny.safetensors");

    private static Txt2ImgOptions Small => new() { Prompt = "a dog", Width = 64, Height = 64, Steps = 2, Sampler = "Euler", Seed = 3 };

    [Fact]
    public void A_checkpoint_is_loaded_once_and_lent_again()
    {
        using var host = new ModelHost();
        StableDiffusionModel first;
        using (var lease = host.Borrow(Tiny, ComputeOptions.CpuFloat32)) first = lease.Model;
        using (var lease = host.Borrow(Tiny, ComputeOptions.CpuFloat32)) Assert.Same(first, lease.Model);
        Assert.Equal(1, host.LoadCount);
        Assert.Equal(2, Assert.Single(host.Loaded).Loans);
    }

    [Fact]
    public async Task A_lent_model_waits_for_its_return_before_the_next_job_gets_it()
    {
        using var host = new ModelHost();
        var lease = host.Borrow(Tiny, ComputeOptions.CpuFloat32);
        var second = Task.Run(() => host.Borrow(Tiny, ComputeOptions.CpuFloat32));
        var first = await Task.WhenAny(second, Task.Delay(300));
        Assert.NotSame(second, first); // the second borrower waits while the first holds the model
        Assert.True(Assert.Single(host.Loaded).InUse);
        lease.Dispose();
        using var next = await second;
        Assert.Same(lease.Model, next.Model);
    }

    [Fact]
    public void Waiting_for_a_busy_model_stops_on_cancellation()
    {
        using var host = new ModelHost();
        using var lease = host.Borrow(Tiny, ComputeOptions.CpuFloat32);
        using var cts = new CancellationTokenSource(100);
        Assert.ThrowsAny<OperationCanceledException>(() => host.Borrow(Tiny, ComputeOptions.CpuFloat32, cts.Token));
    }

    [Fact]
    public void Loading_stops_on_cancellation_and_nothing_stays_loaded()
    {
        using var host = new ModelHost();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => host.Borrow(Tiny, ComputeOptions.CpuFloat32, cts.Token));
        Assert.Empty(host.Loaded);
        // The model can still be borrowed afterwards.
        using var lease = host.Borrow(Tiny, ComputeOptions.CpuFloat32);
        Assert.NotNull(lease.Model.UNet);
    }

    [Fact]
    public void Adapters_a_job_leaves_attached_are_detached_before_the_next_job()
    {
        using var host = new ModelHost();
        byte[] baseline;
        using (var lease = host.Borrow(Tiny, ComputeOptions.CpuFloat32))
            baseline = new Txt2ImgPipeline(lease.Model).Generate(Small).Images[0].Image.Pixels;

        using (var lease = host.Borrow(Tiny, ComputeOptions.CpuFloat32))
        {
            // A careless job: attaches a LoRA, switches to training mode and never cleans up.
            var leaked = LoraNetwork.FromFile(LoraPath, lease.Model.UNet, lease.Model.TextEncoder);
            leaked.Attach();
            lease.Model.UNet.train();
            Assert.NotEqual(baseline, new Txt2ImgPipeline(lease.Model).Generate(Small).Images[0].Image.Pixels);
        }

        using (var lease = host.Borrow(Tiny, ComputeOptions.CpuFloat32))
        {
            Assert.False(lease.Model.UNet.training);
            Assert.Equal(baseline, new Txt2ImgPipeline(lease.Model).Generate(Small).Images[0].Image.Pixels);
            Assert.Equal(0, ModelHost.MakeClean(lease.Model));
        }
    }

    [Fact]
    public void Models_past_capacity_unload_the_least_recently_used_idle_one()
    {
        using var host = new ModelHost(capacity: 1);
        using (host.Borrow(Tiny, ComputeOptions.CpuFloat32)) { }
        using (host.Borrow(TinyLdm, ComputeOptions.CpuFloat32))
            Assert.Equal(Path.GetFullPath(TinyLdm), Assert.Single(host.Loaded).Key.Path);
        using (host.Borrow(Tiny, ComputeOptions.CpuFloat32)) { }
        Assert.Equal(3, host.LoadCount);
    }
}
