using SdLora.Models;
using SdLora.Sampling;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Training;

/// <summary>What the UNet is taught to predict and how examples are weighted.</summary>
/// <param name="DebiasedEstimation">
/// Weight each example by <c>1 / sqrt(snr)</c> (<c>1 / (snr + 1)</c> for v-prediction), snr capped at 1000, as kohya's
/// --debiased_estimation_loss: the noisiest steps, where the picture's overall layout and colours are decided and an
/// epsilon error hardly shows in the loss, count more.
/// </param>
public sealed record DiffusionLossOptions(bool VParameterization = false, double? MinSnrGamma = null, bool DebiasedEstimation = false);

/// <summary>The loss of one batch: the scalar to back-propagate and each example's weighted MSE (detached).</summary>
public sealed record DiffusionLossResult(Tensor Loss, Tensor PerExample) : IDisposable
{
    public void Dispose() { Loss.Dispose(); PerExample.Dispose(); }
}

/// <summary>
/// The DreamBooth-LoRA objective, shared by the training loop and its golden test. For each example i:
/// <c>l_i = w_i * s_i * mean_CHW (unet(x_t, t, c) - target)^2</c> with <c>x_t = sqrt(acp) x0 + sqrt(1-acp) noise</c>,
/// target the noise (epsilon) or the velocity <c>sqrt(acp) noise - sqrt(1-acp) x0</c> (v-prediction),
/// <c>w_i</c> the prior-loss weight for class images (1 for instance images) and <c>s_i</c> the min-SNR-gamma weight
/// (<c>min(snr, gamma) / snr</c>; for v-prediction <c>min(snr, gamma) / (snr + 1)</c>, as kohya).
/// The batch loss is the MEAN of <c>l_i</c> over the batch (kohya's convention, which its learning rates assume);
/// a batch of one instance and one class image therefore gives half of diffusers' summed DreamBooth loss.
/// </summary>
public static class DiffusionLoss
{
    /// <param name="exampleWeights">Per-example weights <c>[B]</c> (prior-loss weight for class images), or null for all ones.</param>
    /// <param name="computeDType">Dtype the UNet runs in (its weights' dtype); the loss is always computed in fp32.</param>
    public static DiffusionLossResult Compute(UNet2DConditionModel unet, NoiseSchedule schedule, Tensor latents, Tensor noise,
        Tensor timesteps, Tensor context, Tensor? exampleWeights, DiffusionLossOptions options, ScalarType computeDType = ScalarType.Float32)
    {
        using var scope = torch.NewDisposeScope();
        var x0 = latents.to(ScalarType.Float32);
        var eps = noise.to(ScalarType.Float32);
        var noisy = schedule.AddNoise(x0, eps, timesteps);
        var pred = unet.forward(noisy.to(computeDType), timesteps, context.to(computeDType)).to(ScalarType.Float32);
        var target = options.VParameterization ? schedule.Velocity(x0, eps, timesteps) : eps;
        var perExample = (pred - target).pow(2).mean([1, 2, 3]);
        var snr = options.MinSnrGamma is not null || options.DebiasedEstimation ? schedule.Snr(timesteps).to(ScalarType.Float32, x0.device) : null;
        if (options.MinSnrGamma is { } gamma)
        {
            var clipped = snr!.clamp_max(gamma);
            perExample = perExample * (options.VParameterization ? clipped / (snr + 1) : clipped / snr);
        }
        if (options.DebiasedEstimation)
        {
            var capped = snr!.clamp_max(1000);
            perExample = perExample * (options.VParameterization ? 1 / (capped + 1) : capped.rsqrt());
        }
        if (exampleWeights is not null) perExample = perExample * exampleWeights.to(ScalarType.Float32, x0.device);
        var loss = perExample.mean();
        return new DiffusionLossResult(loss.MoveToOuterDisposeScope(), perExample.detach().MoveToOuterDisposeScope());
    }
}
