using SdLora.Lora;
using SdLora.Sampling;
using SdLora.Tests.Models;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

/// <summary>
/// One DreamBooth-LoRA step against train_step.safetensors (golden README section 7). The fixture sums the two
/// examples' losses (diffusers); <see cref="DiffusionLoss"/> averages them over the batch (kohya), so the fixture's
/// loss and gradients are exactly 2x ours for this batch of two.
/// </summary>
public class TrainStepGoldenTests
{
    [Theory]
    [InlineData("eps")]
    [InlineData("v")]
    [InlineData("eps_minsnr5")]
    public void Loss_and_every_lora_gradient_match_the_reference_step(string variant)
    {
        using var unet = UNetGoldenTests.LoadTinyUNet();
        foreach (var p in unet.parameters()) p.requires_grad = false;
        using var g = Fixtures.Open("train_step");
        using var network = LoraNetwork.Create(unet, null, new LoraNetworkOptions
        {
            Rank = 4, Alpha = 2, TrainTextEncoder = false, UnetTargets = LoraUnetTargets.Attention,
        });
        Assert.Equal(128, network.Modules.Count);
        foreach (var m in network.Modules)
        {
            using var down = g.Load($"lora_init.{m.LoraName}.lora_down.weight");
            using var up = g.Load($"lora_init.{m.LoraName}.lora_up.weight");
            m.SetWeights(down, up);
            Assert.Equal(2.0, m.Alpha);
        }
        network.Attach();

        using var scope = torch.NewDisposeScope();
        var options = variant switch
        {
            "eps" => new DiffusionLossOptions(),
            "v" => new DiffusionLossOptions(VParameterization: true),
            _ => new DiffusionLossOptions(MinSnrGamma: 5),
        };
        var priorWeights = torch.tensor(new float[] { 1f, 1f }); // row 0 instance, row 1 class; prior_loss_weight 1.0
        using var result = DiffusionLoss.Compute(unet, NoiseSchedule.StableDiffusion1, g.Load("latents"), g.Load("noise"),
            g.Load("timesteps"), g.Load("encoder_hidden_states"), priorWeights, options);

        double expected = g.Load($"{variant}.loss").item<float>();
        double actual = 2 * result.Loss.item<float>();
        Fixtures.AssertClose(expected, actual, Tolerance.RelativeToMax(1e-5), $"{variant} loss");
        var expectedPerExample = g.Load($"{variant}.mse_per_example");
        if (variant == "eps_minsnr5") expectedPerExample = expectedPerExample * g.Load("min_snr_weights");
        Fixtures.AssertClose(expectedPerExample, result.PerExample, 1e-5, $"{variant} per-example loss");

        result.Loss.backward();
        int checkedTensors = 0;
        foreach (var m in network.Modules)
            foreach (var (suffix, weight) in new[] { ("lora_down.weight", m.DownWeight), ("lora_up.weight", m.UpWeight) })
            {
                var name = $"{m.LoraName}.{suffix}";
                var want = g.Load($"{variant}.grad.{name}");
                var got = (weight.grad ?? throw new Xunit.Sdk.XunitException($"{name}: no gradient")) * 2;
                Fixtures.AssertClose(want, got, Tolerance.RelativeToMax(1e-4), $"{variant} grad {name}");
                checkedTensors++;
            }
        Assert.Equal(256, checkedTensors);
    }
}
