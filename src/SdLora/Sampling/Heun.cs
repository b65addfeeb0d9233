using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>
/// Heun's second-order method (Karras et al. 2022, Alg. 1): an Euler step, a second model call at the
/// target sigma, then the averaged slope; the last step (to sigma 0) stays Euler. 2n-1 model calls.
/// </summary>
public sealed class HeunSampler : Sampler
{
    public override string Name => "Heun";
    public override string ShortName => "heun";

    public override SamplerPlan Plan(NoiseSchedule schedule, int steps)
    {
        var euler = SamplerPlans.KDiffusion(schedule, steps);
        var calls = euler.Timesteps.Take(1).Concat(euler.Timesteps.Skip(1).SelectMany(t => new[] { t, t })).ToArray();
        return euler with { Timesteps = calls };
    }

    /// <summary>The corrector: x + (d + d2)/2 * dt from both slopes.</summary>
    public static Tensor Step(Tensor x, Tensor denoised, Tensor xPredicted, Tensor denoisedPredicted, double sigma, double sigmaNext)
    {
        var slope = (x - denoised) / sigma;
        var slopeNext = (xPredicted - denoisedPredicted) / sigmaNext;
        return x + (slope + slopeNext) * (0.5 * (sigmaNext - sigma));
    }

    protected override Tensor Run(SamplingRun run, Tensor x)
    {
        var sigmas = run.Sigmas;
        int n = sigmas.Count - 1;
        for (int i = 0; i < n; i++)
        {
            using var scope = NewDisposeScope();
            double t = run.Timesteps[i == 0 ? 0 : 2 * i - 1];
            var denoised = run.Denoise(x, sigmas[i], t);
            var predicted = EulerSampler.Step(x, denoised, sigmas[i], sigmas[i + 1]);
            run.Report(predicted, denoised);
            if (sigmas[i + 1] > 0)
            {
                var denoisedPredicted = run.Denoise(predicted, sigmas[i + 1], run.Timesteps[2 * i + 1]);
                predicted = Step(x, denoised, predicted, denoisedPredicted, sigmas[i], sigmas[i + 1]);
                run.Report(predicted, denoisedPredicted);
            }
            x = SamplingRun.Replace(x, predicted);
        }
        return x;
    }
}
