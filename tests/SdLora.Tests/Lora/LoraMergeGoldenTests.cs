using SdLora.Lora;
using SdLora.Pipelines;
using TorchSharp;
using Xunit;

namespace SdLora.Tests.Lora;

/// <summary>
/// `lora merge` checked against diffusers' outputs (the lora fixture), at every multiplier the fixture has and with a
/// LoRA split over two specs, so a merge that mishandled the weight or summed specs wrongly would fail.
/// </summary>
[Trait("Category", "Golden")]
public class LoraMergeGoldenTests
{
    private static string LoraPath => Fixtures.Golden("lora_kohya_tiny.safetensors");

    public static TheoryData<string, double[], string> Cases() => new()
    {
        { "one spec at 1", [1.0], "m1" },
        { "one spec at 0.5", [0.5], "m0_5" },
        { "two specs adding to 0.5", [0.25, 0.25], "m0_5" },
        { "two specs adding to 1", [1.5, -0.5], "m1" },
    };

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public void Merged_single_file_gives_the_reference_lora_outputs(string why, double[] weights, string suffix)
    {
        using var tmp = Fixtures.TempDir();
        var merged = tmp.File("merged.safetensors");
        var checkpoint = Fixtures.Golden("tiny-sd15-ldm.safetensors");
        // The YAML beside the single file gives its dims; without one they come from the tensor shapes.
        var yaml = Path.ChangeExtension(checkpoint, ".yaml");
        if (File.Exists(yaml)) File.Copy(yaml, tmp.File("merged.yaml"));
        LoraCheckpointMerge.Merge(checkpoint, weights.Select(w => new LoraUse(LoraPath, w)).ToList(), merged);
        using var model = StableDiffusionModel.Load(merged);
        using var g = Fixtures.Open("lora");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var pred = model.UNet.forward(g.Load("unet_sample"), g.Load("unet_timesteps"), g.Load("unet_encoder_hidden_states"));
        var te = model.TextEncoder.Encode(g.Load("te_input_ids"), 1);

        // The merged file stays fp16 like its input (one rounding of each weight): 1e-2 of the output scale. The
        // multipliers must be told apart at that tolerance, or this test would prove nothing about the weight.
        const double tol = 1e-2;
        var other = suffix == "m1" ? "m0_5" : "m1";
        Assert.True((g.Load("unet_noise_pred_" + other) - g.Load("unet_noise_pred_" + suffix)).abs().max().item<float>() > 10 * tol * 1.3,
            "precondition: the fixture's multipliers differ by much more than the tolerance");
        Fixtures.AssertClose(g.Load("unet_noise_pred_" + suffix), pred, tol, $"{why}: UNet");
        Fixtures.AssertClose(g.Load("te_last_hidden_state_" + suffix), te, tol, $"{why}: text encoder");
    }
}
