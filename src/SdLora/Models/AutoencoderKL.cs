using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// The Stable Diffusion VAE (diffusers' AutoencoderKL): images in [-1, 1] to a diagonal Gaussian over
/// latents and back. Parameter names equal diffusers'. The UNet works on latents times
/// <see cref="ScalingFactor"/>; <see cref="Decode"/> expects latents already divided by it.
/// </summary>
public sealed class AutoencoderKL : nn.Module<Tensor, Tensor>
{
    /// <summary>GroupNorm epsilon everywhere in the VAE.</summary>
    internal const double NormEps = 1e-6;

    public VaeEncoder encoder;
    public VaeDecoder decoder;
    public AdaptableConv2d quant_conv;
    public AdaptableConv2d post_quant_conv;

    public AutoencoderKLConfig Config { get; }
    public double ScalingFactor => Config.ScalingFactor;

    public AutoencoderKL(AutoencoderKLConfig config) : base(nameof(AutoencoderKL))
    {
        Config = config;
        encoder = new VaeEncoder(config);
        decoder = new VaeDecoder(config);
        quant_conv = new AdaptableConv2d(2 * config.LatentChannels, 2 * config.LatentChannels, 1);
        post_quant_conv = new AdaptableConv2d(config.LatentChannels, config.LatentChannels, 1);
        RegisterComponents();
    }

    /// <param name="image">[B, 3, H, W] in [-1, 1]; H and W multiples of 8.</param>
    public DiagonalGaussianDistribution Encode(Tensor image) => new(quant_conv.call(encoder.call(image)));

    /// <param name="latents">[B, 4, H/8, W/8], already divided by <see cref="ScalingFactor"/>.</param>
    /// <returns>The raw decoder output (about [-1, 1], not clamped).</returns>
    public Tensor Decode(Tensor latents) => Decode(latents, null);

    /// <param name="debug">When given, receives <c>debug.post_quant_conv</c> (detached; the caller disposes it).</param>
    public Tensor Decode(Tensor latents, Dictionary<string, Tensor>? debug)
    {
        var z = post_quant_conv.call(latents);
        if (debug is not null) debug["debug.post_quant_conv"] = z.detach().clone().DetachFromDisposeScope();
        return decoder.call(z);
    }

    /// <summary>Encode, take the posterior mean, decode.</summary>
    public override Tensor forward(Tensor image) => Decode(Encode(image).Mean);
}

/// <summary>
/// The encoder's posterior: <c>moments = [mean, logvar]</c> along channels, logvar clamped to [-30, 20].
/// </summary>
public sealed class DiagonalGaussianDistribution
{
    /// <summary>The raw <c>quant_conv</c> output [B, 2C, h, w].</summary>
    public Tensor Moments { get; }
    public Tensor Mean { get; }
    public Tensor LogVar { get; }
    public Tensor Std { get; }

    public DiagonalGaussianDistribution(Tensor moments)
    {
        Moments = moments;
        var parts = moments.chunk(2, 1);
        Mean = parts[0];
        LogVar = parts[1].clamp(-30.0, 20.0);
        Std = (LogVar * 0.5).exp();
    }

    /// <summary><c>mean + std * noise</c>, with noise ~ N(0, 1) supplied by the caller (seeded generators live there).</summary>
    public Tensor Sample(Tensor noise) => Mean + Std * noise;

    /// <summary>Draws the noise from <paramref name="generator"/>.</summary>
    public Tensor Sample(Generator? generator = null) =>
        Sample(torch.randn(Mean.shape, dtype: Mean.dtype, device: Mean.device, generator: generator));

    public Tensor Mode() => Mean;
}
