using SdLora.Imaging;
using SdLora.Pipelines;
using SdLora.Sampling;
using SdLora.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

/// <summary>
/// How close a model has come to a training image, measured two ways with noise and timesteps fixed: (1) the UNet's
/// loss on the image's latent (8 fixed timesteps, fixed noise) under a conditioning; (2) the MSE between the latent a
/// 20-step DDIM run generates under that conditioning (same starting noise, CFG 1) and the image's latent. Latent
/// space, because the tiny model's random VAE decodes any latent to similar-looking noise.
/// </summary>
internal sealed class ConceptProbe : IDisposable
{
    private readonly DisposeScope _scope = torch.NewDisposeScope();
    private readonly Tensor _noise, _timesteps, _start;

    /// <summary>The training image's latent (VAE posterior mean, scaled), placed as training placed it.</summary>
    public Tensor Latents { get; }

    /// <param name="vaeModel">A model whose VAE encodes the image (every method leaves the VAE as it is).</param>
    public ConceptProbe(StableDiffusionModel vaeModel, string imagePath, int resolution = 64)
    {
        using var noGrad = torch.no_grad();
        var photo = RgbImage.Load(imagePath);
        var target = new BucketManager(Resolution.Square(resolution), resolution, resolution * 2, 64).Place(photo.Width, photo.Height).Apply(photo);
        Latents = vaeModel.Vae.Encode(target.ToTensor()).Mean * vaeModel.Vae.ScalingFactor;
        long size = Latents.shape[2];
        _timesteps = torch.tensor(new long[] { 50, 150, 300, 450, 600, 750, 850, 950 });
        using var g = new Generator(123, CPU);
        _noise = torch.randn([8, 4, size, size], generator: g);
        _start = torch.randn([1, 4, size, size], generator: g);
    }

    /// <summary>The instance prompt's conditioning through <paramref name="model"/>'s own text encoder.</summary>
    public static Tensor Context(StableDiffusionModel model, string prompt)
    {
        using var noGrad = torch.no_grad();
        return model.TextEncoder.Encode(torch.tensor(model.Tokenizer.EncodeForModel(prompt), [1, 77], ScalarType.Int64));
    }

    public (double Loss, double Mse) Measure(StableDiffusionModel model, Tensor context)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        using var r = DiffusionLoss.Compute(model.UNet, model.Schedule, Latents.expand(8, -1, -1, -1), _noise, _timesteps, context.expand(8, -1, -1), null, new());
        return (r.Loss.item<float>(), (Generate(model, context) - Latents).pow(2).mean().item<float>());
    }

    /// <summary>The latent a 20-step DDIM run makes from the fixed start under <paramref name="context"/> (CFG 1).</summary>
    public Tensor Generate(StableDiffusionModel model, Tensor context)
    {
        using var noGrad = torch.no_grad();
        return new Txt2ImgPipeline(model).Sample(SamplerCatalog.Get("DDIM"), _start, context, context, 1.0, 20);
    }

    public void Dispose() => _scope.Dispose();
}
