using SdLora.Lora;
using SdLora.Sampling;
using SdLora.Tests.Models;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

public class CheckpointingTests
{
    [Fact]
    public void Gradient_checkpointing_gives_the_same_lora_gradients_step_after_step()
    {
        using var unet = UNetGoldenTests.LoadTinyUNet(Fixtures.CopiedTinyModel);
        foreach (var p in unet.parameters()) p.requires_grad = false;
        torch.manual_seed(3);
        using var network = LoraNetwork.Create(unet, null, new LoraNetworkOptions { Rank = 4, Alpha = 4, TrainTextEncoder = false });
        foreach (var m in network.Modules) using (torch.no_grad()) m.UpWeight.normal_(0, 0.01);
        network.Attach();
        using var g = new Generator(5, CPU);
        var latents = torch.randn([1, 4, 8, 8], generator: g); var noise = torch.randn([1, 4, 8, 8], generator: g);
        var context = torch.randn([1, 77, 32], generator: g); var t = torch.tensor(new long[] { 400 });
        List<Tensor> Grads(bool checkpointing)
        {
            unet.GradientCheckpointing = checkpointing;
            unet.train();
            var result = new List<Tensor>();
            for (int step = 0; step < 2; step++) // the second step must work too (no state left behind by the first)
            {
                using var scope = torch.NewDisposeScope();
                foreach (var p in network.Parameters()) p.grad?.zero_();
                using var r = DiffusionLoss.Compute(unet, NoiseSchedule.StableDiffusion1, latents, noise, t, context, null, new());
                r.Loss.backward();
            }
            foreach (var p in network.Parameters()) { var c = p.grad!.clone(); c.DetachFromDisposeScope(); result.Add(c); }
            return result;
        }
        var plain = Grads(false);
        var checkpointed = Grads(true);
        // Checkpointing recomputes each block's forward in backward, with the graph on, where the first forward ran
        // without it; the kernels may differ in rounding, and the gradients then differ as two fp32 evaluations of the
        // same step do.
        double largest = plain.Max(g => g.abs().max().item<float>());
        Assert.True(largest > 0, "no gradient reached the LoRA");
        for (int i = 0; i < plain.Count; i++)
            Fixtures.AssertClose(plain[i], checkpointed[i], Tolerance.Gradient(largest), $"grad {i}");
    }
}
