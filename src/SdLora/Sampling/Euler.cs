using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>Euler's method on the probability-flow ODE dx/dsigma = (x - D(x))/sigma (Karras et al. 2022, Alg. 1 without churn).</summary>
public sealed class EulerSampler : Sampler
{
    public override string Name => "Euler";
    public override string ShortName => "euler";
    public override SamplerPlan Plan(NoiseSchedule schedule, int steps) => SamplerPlans.KDiffusion(schedule, steps);

    public static Tensor Step(Tensor x, Tensor denoised, double sigma, double sigmaNext) =>
        x + (x - denoised) * ((sigmaNext - sigma) / sigma);

    protected override Tensor Run(SamplingRun run, Tensor x)
    {
        var sigmas = run.Sigmas;
        for (int i = 0; i < run.Timesteps.Count; i++)
        {
            using var scope = NewDisposeScope();
            var denoised = run.Denoise(x, sigmas[i], run.Timesteps[i]);
            var next = Step(x, denoised, sigmas[i], sigmas[i + 1]);
            run.Report(next, denoised);
            x = SamplingRun.Replace(x, next);
        }
        return x;
    }
}
