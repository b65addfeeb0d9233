using SdLora.Lora;
using SdLora.Sampling;
using SdLora.Tests.Models;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

/// <summary>
/// One DreamBooth-LoRA step against train_step.safetensors (golden README section 7). The fixture sums the examples'
/// losses (diffusers); <see cref="DiffusionLoss"/> averages them over the batch (kohya), so the fixture's loss and
/// gradients are exactly batch-size times ours.
/// </summary>
[Trait("Category", "Golden")]
public class TrainStepGoldenTests
{
    /// <summary>Loss options of a fixture variant: <c>eps</c>, <c>v</c>, <c>eps_minsnrG</c> (min-SNR weighting with gamma G).</summary>
    private static DiffusionLossOptions OptionsFor(string variant)
    {
        const string minSnr = "_minsnr";
        double? gamma = variant.Contains(minSnr) ? double.Parse(variant[(variant.IndexOf(minSnr) + minSnr.Length)..], System.Globalization.CultureInfo.InvariantCulture) : null;
        bool v = variant.StartsWith("v");
        return new DiffusionLossOptions(VParameterization: v, MinSnrGamma: gamma);
    }

    [SkippableTheory]
    [InlineData("eps")]
    [InlineData("v")]
    [InlineData("eps_minsnr5")]
    public void Loss_and_every_lora_gradient_match_the_reference_step(string variant)
    {
        using var json = Fixtures.Json("train_step");
        using var g = Fixtures.Open("train_step");
        if (!json.RootElement.GetProperty("values").TryGetProperty(variant, out _))
            throw new SkipException($"variant {variant} not in {Fixtures.Golden("train_step.json")}");
        var lora = json.RootElement.GetProperty("lora");
        int rank = lora.GetProperty("rank").GetInt32();
        double alpha = lora.GetProperty("alpha").GetDouble();
        var names = json.RootElement.GetProperty("tensor_names").GetProperty("kohya_names").EnumerateArray().Select(e => e.GetString()!).ToHashSet();
        double priorLossWeight = json.RootElement.GetProperty("loss").GetProperty("prior_loss_weight").GetDouble();

        using var unet = UNetGoldenTests.LoadTinyUNet(Fixtures.Golden("tiny-sd15"));
        foreach (var p in unet.parameters()) p.requires_grad = false;
        // The fixture's LoRA targets every attention projection (attn1/attn2 to_q, to_k, to_v, to_out.0).
        using var network = LoraNetwork.Create(unet, null, new LoraNetworkOptions
        {
            Rank = rank, Alpha = alpha, TrainTextEncoder = false, UnetTargets = LoraUnetTargets.Attention,
        });
        Assert.Equal(names.Order(StringComparer.Ordinal), network.Modules.Select(m => m.LoraName).Order(StringComparer.Ordinal));
        foreach (var m in network.Modules)
        {
            using var down = g.Load($"lora_init.{m.LoraName}.lora_down.weight");
            using var up = g.Load($"lora_init.{m.LoraName}.lora_up.weight");
            m.SetWeights(down, up);
            Assert.Equal(alpha, m.Alpha);
        }
        network.Attach();

        using var scope = torch.NewDisposeScope();
        var latents = g.Load("latents");
        long batch = latents.shape[0];
        // Row 0 is the instance example, the others prior-preservation (class) examples weighted by prior_loss_weight.
        var priorWeights = torch.tensor(Enumerable.Range(0, (int)batch).Select(i => i == 0 ? 1f : (float)priorLossWeight).ToArray());
        var schedule = NoiseSchedule.FromSchedulerConfigJson(File.ReadAllText(Fixtures.Golden("tiny-sd15/scheduler/scheduler_config.json")));
        using var result = DiffusionLoss.Compute(unet, schedule, latents, g.Load("noise"),
            g.Load("timesteps"), g.Load("encoder_hidden_states"), priorWeights, OptionsFor(variant));

        Fixtures.AssertClose(g.Load($"{variant}.loss").item<float>(), batch * result.Loss.item<float>(),
            Fixtures.GoldenTolerance("train_step", $"{variant}.loss", Tolerance.RelativeToMax(1e-5)), $"{variant} loss");
        var expectedPerExample = g.Load($"{variant}.mse_per_example");
        if (OptionsFor(variant).MinSnrGamma is not null) expectedPerExample = expectedPerExample * g.Load("min_snr_weights");
        Fixtures.AssertClose(expectedPerExample, result.PerExample, Fixtures.GoldenTolerance("train_step", $"{variant}.mse_per_example", 1e-5), $"{variant} per-example loss");

        result.Loss.backward();
        foreach (var m in network.Modules)
            foreach (var (suffix, weight) in new[] { ("lora_down.weight", m.DownWeight), ("lora_up.weight", m.UpWeight) })
            {
                var name = $"{variant}.grad.{m.LoraName}.{suffix}";
                var got = (weight.grad ?? throw new Xunit.Sdk.XunitException($"{name}: no gradient")) * batch;
                Fixtures.AssertClose(g.Load(name), got, Fixtures.GoldenTolerance("train_step", name, Tolerance.RelativeToMax(1e-4)), name);
            }
    }
}
