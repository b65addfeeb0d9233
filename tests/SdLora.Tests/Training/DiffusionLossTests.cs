using SdLora.Models;
using SdLora.Sampling;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

public class DiffusionLossTests
{
    /// <summary>The tiny UNet and three random examples (latents, noise, text context) drawn from <paramref name="seed"/>.</summary>
    private static (UNet2DConditionModel Unet, Tensor Latents, Tensor Noise, Tensor Context) ThreeExamples(ulong seed)
    {
        var unet = Fixtures.LoadTinyPart(Fixtures.CopiedTinyModel, "unet", "diffusion_pytorch_model.safetensors", json => new UNet2DConditionModel(UNetConfig.FromDiffusersJson(json)));
        using var g = new Generator(seed, CPU);
        return (unet, torch.randn([3, 4, 8, 8], generator: g), torch.randn([3, 4, 8, 8], generator: g),
            torch.randn([3, 77, unet.Config.CrossAttentionDim], generator: g));
    }

    /// <summary>
    /// The per-example weights (prior-loss weight for class images) scale each example's MSE before the batch mean.
    /// The reference is computed here from the definition (noising by hand with alphas_cumprod), not through the code
    /// under test, and with weights other than 1 so that a loss that ignored them would fail.
    /// </summary>
    [Fact]
    public void Example_weights_scale_each_examples_mse_before_the_batch_mean()
    {
        using var scope = torch.NewDisposeScope();
        var (unet, latents, noise, context) = ThreeExamples(11);
        using var unetHandle = unet;
        var schedule = NoiseSchedule.StableDiffusion1;
        long[] steps = [50, 400, 900];
        var timesteps = torch.tensor(steps);
        float[] w = [0.25f, 1f, 3f];

        using var noGrad = torch.no_grad();
        var rows = new double[3];
        for (int i = 0; i < 3; i++)
        {
            double acp = schedule.AlphaCumprodAt((int)steps[i]);
            var noisy = Math.Sqrt(acp) * latents[i..(i + 1)] + Math.Sqrt(1 - acp) * noise[i..(i + 1)];
            var pred = unet.forward(noisy, timesteps[i..(i + 1)], context[i..(i + 1)]);
            rows[i] = (pred - noise[i..(i + 1)]).pow(2).mean().item<float>();
        }
        double expected = Enumerable.Range(0, 3).Sum(i => w[i] * rows[i]) / 3;

        using var weighted = DiffusionLoss.Compute(unet, schedule, latents, noise, timesteps, context, torch.tensor(w), new());
        using var plain = DiffusionLoss.Compute(unet, schedule, latents, noise, timesteps, context, null, new());
        double tol = 1e-5 * Math.Max(1, Math.Abs(expected));
        Assert.InRange(weighted.Loss.item<float>(), expected - tol, expected + tol);
        Assert.InRange(plain.Loss.item<float>(), rows.Average() - tol, rows.Average() + tol);
        var per = weighted.PerExample.data<float>().ToArray();
        for (int i = 0; i < 3; i++)
            Assert.InRange(per[i], w[i] * rows[i] - tol, w[i] * rows[i] + tol);
    }

    /// <summary>
    /// Debiased estimation weights each example's MSE by 1/sqrt(snr) (epsilon) or 1/(snr + 1) (v), snr = acp/(1-acp)
    /// computed here in doubles from the schedule: the noisiest step weighs far more than the cleanest.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Debiased_estimation_weights_each_example_by_its_signal_to_noise_ratio(bool vPrediction)
    {
        using var scope = torch.NewDisposeScope();
        var (unet, latents, noise, context) = ThreeExamples(12);
        using var unetHandle = unet;
        var schedule = NoiseSchedule.StableDiffusion1;
        var timesteps = torch.tensor(new long[] { 20, 500, 999 });

        using var noGrad = torch.no_grad();
        using var plain = DiffusionLoss.Compute(unet, schedule, latents, noise, timesteps, context, null, new(VParameterization: vPrediction));
        using var debiased = DiffusionLoss.Compute(unet, schedule, latents, noise, timesteps, context, null, new(VParameterization: vPrediction, DebiasedEstimation: true));
        var p = plain.PerExample.data<float>().ToArray();
        var d = debiased.PerExample.data<float>().ToArray();
        long[] steps = [20, 500, 999];
        for (int i = 0; i < 3; i++)
        {
            double acp = schedule.AlphaCumprodAt((int)steps[i]);
            double snr = Math.Min(acp / (1 - acp), 1000);
            double weight = vPrediction ? 1 / (snr + 1) : 1 / Math.Sqrt(snr);
            Assert.InRange(d[i] / p[i], weight * (1 - 1e-4), weight * (1 + 1e-4));
        }
        Assert.True(d[2] / p[2] > 10 * (d[0] / p[0]), "the noisiest example must weigh far more than the cleanest");
    }
}
