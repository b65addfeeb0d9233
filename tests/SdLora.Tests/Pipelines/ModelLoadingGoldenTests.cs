using SdLora.Pipelines;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Pipelines;

/// <summary>
/// The whole model stack loaded through <see cref="StableDiffusionModel.Load"/> — from the diffusers folder and from
/// the LDM single file + YAML — reproduces every reference output (text encoder, UNet, VAE).
/// </summary>
public class ModelLoadingGoldenTests(TinyModels models) : IClassFixture<TinyModels>
{
    [Theory]
    [InlineData("diffusers")]
    [InlineData("ldm")]
    public void Loaded_model_matches_reference_text_encoder_unet_and_vae(string layout)
    {
        var model = models.Get(layout);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();

        using (var g = Fixtures.Open("text_encoder"))
        {
            var ids = g.Load("input_ids");
            Fixtures.AssertClose(g.Load("last_hidden_state"), model.TextEncoder.Encode(ids, 1), 1e-4, $"{layout}: last_hidden_state");
            Fixtures.AssertClose(g.Load("penultimate_hidden_state_normed"), model.TextEncoder.Encode(ids, 2), 1e-4, $"{layout}: clip skip 2");
        }
        using (var g = Fixtures.Open("unet"))
        {
            var sample = g.Load("sample");
            var context = g.Load("encoder_hidden_states");
            Fixtures.AssertClose(g.Load("noise_pred_int"), model.UNet.forward(sample, g.Load("timesteps_int"), context), 1e-4, $"{layout}: noise_pred_int");
            Fixtures.AssertClose(g.Load("noise_pred_float"), model.UNet.forward(sample, g.Load("timesteps_float"), context), 1e-4, $"{layout}: noise_pred_float");
            Fixtures.AssertClose(g.Load("noise_pred_scalar"), model.UNet.forward(sample, g.Load("timestep_scalar"), context), 1e-4, $"{layout}: noise_pred_scalar");
        }
        using (var g = Fixtures.Open("vae"))
        {
            var posterior = model.Vae.Encode(g.Load("image"));
            Fixtures.AssertClose(g.Load("posterior_mean"), posterior.Mean, 1e-4, $"{layout}: posterior_mean");
            Fixtures.AssertClose(g.Load("posterior_logvar"), posterior.LogVar, 1e-4, $"{layout}: posterior_logvar");
            Fixtures.AssertClose(g.Load("decoded"), model.Vae.Decode(g.Load("decoder_input")), 1e-4, $"{layout}: decoded");
            Assert.Equal(0.18215, model.Vae.ScalingFactor, 6);
        }
    }

    [Fact]
    public void Wrong_files_are_refused_with_what_they_are()
    {
        var lora = Assert.Throws<SdLoraException>(() => StableDiffusionModel.Load(Fixtures.Golden("lora_kohya_tiny.safetensors")));
        Assert.Contains("lora_kohya_tiny.safetensors", lora.Message);
        Assert.Contains("LoRA", lora.Message);
        var missing = Assert.Throws<SdLoraException>(() => StableDiffusionModel.Load("/nonexistent/model.safetensors"));
        Assert.Contains("/nonexistent/model.safetensors", missing.Message);
    }
}
