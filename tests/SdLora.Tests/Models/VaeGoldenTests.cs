using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Models;

[Trait("Category", "Golden")]
public class VaeGoldenTests
{
    internal static AutoencoderKL LoadTinyVae(string modelDir) =>
        Fixtures.LoadTinyPart(modelDir, "vae", "diffusion_pytorch_model.safetensors", json => new AutoencoderKL(AutoencoderKLConfig.FromDiffusersJson(json)));

    private static Tolerance Tol(string tensor) => Fixtures.GoldenTolerance("vae", tensor, 1e-4);

    private static void AssertMatches(SafetensorsFile g, string tensor, Tensor actual) =>
        Fixtures.AssertClose(g.Load(tensor), actual, Tol(tensor), tensor);

    [SkippableFact]
    public void Vae_parameter_names_equal_the_diffusers_checkpoint_keys()
    {
        using var vae = LoadTinyVae(Fixtures.Golden("tiny-sd15"));
        using var weights = SafetensorsFile.Open(Fixtures.Golden("tiny-sd15/vae/diffusion_pytorch_model.safetensors"));
        var names = vae.named_parameters().Select(p => p.name).Concat(vae.named_buffers().Select(b => b.name)).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        var keys = weights.Keys.OrderBy(n => n, StringComparer.Ordinal).ToArray();
        Assert.NotEmpty(keys);
        Assert.Equal(keys, names);
        using var json = Fixtures.Json("vae");
        Assert.Equal(json.RootElement.GetProperty("scaling_factor").GetDouble(), vae.ScalingFactor);
    }

    [SkippableFact]
    public void Vae_encoder_matches_reference_posterior()
    {
        using var g = Fixtures.Open("vae");
        using var vae = LoadTinyVae(Fixtures.Golden("tiny-sd15"));
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var posterior = vae.Encode(g.Load("image"));
        AssertMatches(g, "encoder_moments", posterior.Moments);
        AssertMatches(g, "posterior_mean", posterior.Mean);
        AssertMatches(g, "posterior_logvar", posterior.LogVar);
        AssertMatches(g, "posterior_std", posterior.Std);
        AssertMatches(g, "latent_sample", posterior.Sample(g.Load("sample_noise")));
    }

    [SkippableFact]
    public void Vae_decoder_matches_reference_image()
    {
        using var g = Fixtures.Open("vae");
        using var vae = LoadTinyVae(Fixtures.Golden("tiny-sd15"));
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        // One fp32 division of the UNet-space latents by the scaling factor: within a few units of fp32 rounding.
        Fixtures.AssertClose(g.Load("decoder_input"), g.Load("decoder_input_scaled") / vae.ScalingFactor, Fixtures.GoldenTolerance("vae", "decoder_input", 1e-6), "decoder_input");
        var debug = new Dictionary<string, Tensor>();
        var decoded = vae.Decode(g.Load("decoder_input"), debug);
        AssertMatches(g, "debug.post_quant_conv", debug["debug.post_quant_conv"]);
        AssertMatches(g, "decoded", decoded);
        debug["debug.post_quant_conv"].Dispose();
    }
}
