using SdLora.Pipelines;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Pipelines;

/// <summary>
/// The whole model stack loaded through <see cref="StableDiffusionModel.Load"/> — from the diffusers folder and from
/// the LDM single file + YAML — reproduces every reference output (text encoder, UNet, VAE).
/// </summary>
[Trait("Category", "Golden")]
public class ModelLoadingGoldenTests(TinyModels models) : IClassFixture<TinyModels>
{
    [SkippableTheory]
    [InlineData("diffusers")]
    [InlineData("ldm")]
    public void Loaded_model_matches_reference_text_encoder_unet_and_vae(string layout)
    {
        using var te = Fixtures.Open("text_encoder");
        using var un = Fixtures.Open("unet");
        using var va = Fixtures.Open("vae");
        using var vaeJson = Fixtures.Json("vae");
        var model = models.Get(layout);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        void Check(string fixture, SdLora.IO.SafetensorsFile g, string tensor, Tensor actual) =>
            Fixtures.AssertClose(g.Load(tensor), actual, Fixtures.GoldenTolerance(fixture, tensor, 1e-4), $"{layout}: {fixture} {tensor}");

        var ids = te.Load("input_ids");
        Check("text_encoder", te, "last_hidden_state", model.TextEncoder.Encode(ids, 1));
        Check("text_encoder", te, "penultimate_hidden_state_normed", model.TextEncoder.Encode(ids, 2));

        var sample = un.Load("sample");
        var context = un.Load("encoder_hidden_states");
        foreach (var (timesteps, output) in new[] { ("timesteps_int", "noise_pred_int"), ("timesteps_float", "noise_pred_float"), ("timestep_scalar", "noise_pred_scalar") })
            Check("unet", un, output, model.UNet.forward(sample, un.Load(timesteps), context));

        var posterior = model.Vae.Encode(va.Load("image"));
        Check("vae", va, "posterior_mean", posterior.Mean);
        Check("vae", va, "posterior_logvar", posterior.LogVar);
        Check("vae", va, "decoded", model.Vae.Decode(va.Load("decoder_input")));
        Assert.Equal(vaeJson.RootElement.GetProperty("scaling_factor").GetDouble(), model.Vae.ScalingFactor, 6);
    }
}

public class ModelLoadingTests
{
    [Fact]
    public void Wrong_files_are_refused_with_what_they_are()
    {
        var lora = Assert.Throws<SdLoraException>(() => StableDiffusionModel.Load(Fixtures.CopiedSet("lora_kohya_tiny.safetensors")));
        Assert.Contains("lora_kohya_tiny.safetensors", lora.Message);
        Assert.Contains("LoRA", lora.Message);
        var missing = Assert.Throws<SdLoraException>(() => StableDiffusionModel.Load("/nonexistent/model.safetensors"));
        Assert.Contains("/nonexistent/model.safetensors", missing.Message);
    }
}
