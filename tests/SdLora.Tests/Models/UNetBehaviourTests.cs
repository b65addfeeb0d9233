using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Models;

public class UNetBehaviourTests
{
    private static (Tensor sample, Tensor t, Tensor context) Inputs()
    {
        using var g = SdLora.IO.SafetensorsFile.Open(Fixtures.CopiedSet("unet.safetensors"));
        return (g.Load("sample"), g.Load("timesteps_int"), g.Load("encoder_hidden_states"));
    }

    private static Dictionary<string, Tensor> Gradients(UNet2DConditionModel unet, Tensor sample, Tensor t, Tensor context, string[] trainable, bool inputRequiresGrad)
    {
        foreach (var p in unet.parameters()) { p.requires_grad = false; p.grad = null; }
        var named = unet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var name in trainable) named[name].requires_grad = true;
        var x = sample.detach().clone().requires_grad_(inputRequiresGrad);
        var output = unet.forward(x, t, context);
        var weights = torch.linspace(-1, 1, output.NumberOfElements).reshape(output.shape);
        (output * weights).sum().backward();
        var grads = trainable.ToDictionary(n => n, n => named[n].grad!.clone());
        if (inputRequiresGrad) grads["sample"] = x.grad!.clone();
        return grads;
    }

    [Fact]
    public void Gradient_checkpointing_gives_the_same_gradients()
    {
        using var unet = UNetGoldenTests.LoadTinyUNet(Fixtures.CopiedTinyModel);
        unet.train();
        using var scope = torch.NewDisposeScope();
        var (sample, t, context) = Inputs();
        string[] trainable = ["conv_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", "up_blocks.3.resnets.2.conv1.weight", "mid_block.attentions.0.proj_out.weight"];
        foreach (bool inputRequiresGrad in new[] { true, false })
        {
            unet.GradientCheckpointing = false;
            var plain = Gradients(unet, sample, t, context, trainable, inputRequiresGrad);
            unet.GradientCheckpointing = true;
            var checkpointed = Gradients(unet, sample, t, context, trainable, inputRequiresGrad);
            Assert.Equal(plain.Keys, checkpointed.Keys);
            double largest = plain.Values.Max(g => g.abs().max().item<float>());
            foreach (var (name, g) in plain)
            {
                Assert.True(g.abs().max().item<float>() > 0, $"{name}: zero gradient");
                // The recomputed forward and the order in which skip-path gradients are summed may round differently.
                Fixtures.AssertClose(g, checkpointed[name], Tolerance.Gradient(largest), $"grad {name} (input requires grad: {inputRequiresGrad})");
            }
        }
    }

    [Fact]
    public void UNet_runs_in_bf16_close_to_fp32()
    {
        using var unet = UNetGoldenTests.LoadTinyUNet(Fixtures.CopiedTinyModel);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var (sample, t, context) = Inputs();
        var reference = unet.forward(sample, t, context);
        unet.to(ScalarType.BFloat16);
        var output = unet.forward(sample.to(ScalarType.BFloat16), t, context.to(ScalarType.BFloat16));
        Assert.Equal(ScalarType.BFloat16, output.dtype);
        Fixtures.AssertClose(reference, output.to(ScalarType.Float32), Tolerance.Bf16VsFp32, "bf16 noise prediction");
    }

    [Fact]
    public void Repeated_forwards_in_dispose_scopes_keep_live_tensor_count_flat()
    {
        using var unet = UNetGoldenTests.LoadTinyUNet(Fixtures.CopiedTinyModel);
        var (sample, t, context) = Inputs();
        var counts = new List<long>();
        for (int i = 0; i < 4; i++)
        {
            using (var scope = torch.NewDisposeScope())
            using (torch.no_grad())
            {
                var noise = unet.forward(sample, t, context);
                sample.copy_(sample - 0.01 * noise);
            }
            counts.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        Assert.True(counts[3] <= counts[0], $"live tensors grew: {string.Join(", ", counts)}");
        sample.Dispose(); t.Dispose(); context.Dispose();
    }
}
