using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Models;

public class VaeGoldenTests
{
    internal static AutoencoderKL LoadTinyVae() =>
        Fixtures.LoadTinyPart("vae", "diffusion_pytorch_model.safetensors", json => new AutoencoderKL(AutoencoderKLConfig.FromDiffusersJson(json)));

    [Fact]
    public void Vae_parameter_names_equal_the_diffusers_checkpoint_keys()
    {
        using var vae = LoadTinyVae();
        using var weights = SafetensorsFile.Open(Fixtures.Golden("tiny-sd15/vae/diffusion_pytorch_model.safetensors"));
        var names = vae.named_parameters().Select(p => p.name).Concat(vae.named_buffers().Select(b => b.name)).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        var keys = weights.Keys.OrderBy(n => n, StringComparer.Ordinal).ToArray();
        Assert.Equal(244, keys.Length);
        Assert.Equal(keys, names);
        Assert.Equal(0.18215, vae.ScalingFactor);
    }

    [Fact]
    public void Vae_encoder_matches_reference_posterior()
    {
        using var vae = LoadTinyVae();
        using var g = Fixtures.Open("vae");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var posterior = vae.Encode(g.Load("image"));
        Fixtures.AssertClose(g.Load("encoder_moments"), posterior.Moments, 1e-4, "encoder_moments");
        Fixtures.AssertClose(g.Load("posterior_mean"), posterior.Mean, 1e-4, "posterior_mean");
        Fixtures.AssertClose(g.Load("posterior_logvar"), posterior.LogVar, 1e-4, "posterior_logvar");
        Fixtures.AssertClose(g.Load("posterior_std"), posterior.Std, 1e-4, "posterior_std");
        Fixtures.AssertClose(g.Load("latent_sample"), posterior.Sample(g.Load("sample_noise")), 1e-4, "latent_sample");
    }

    [Fact]
    public void Vae_decoder_matches_reference_image()
    {
        using var vae = LoadTinyVae();
        using var g = Fixtures.Open("vae");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var input = g.Load("decoder_input_scaled") / vae.ScalingFactor;
        Fixtures.AssertClose(g.Load("decoder_input"), input, 1e-6, "decoder_input");
        var debug = new Dictionary<string, Tensor>();
        var decoded = vae.Decode(g.Load("decoder_input"), debug);
        Fixtures.AssertClose(g.Load("debug.post_quant_conv"), debug["debug.post_quant_conv"], 1e-4, "debug.post_quant_conv");
        Fixtures.AssertClose(g.Load("decoded"), decoded, 1e-4, "decoded");
        debug["debug.post_quant_conv"].Dispose();
    }
}
