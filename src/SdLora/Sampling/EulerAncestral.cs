using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>
/// Euler ancestral ("Euler a"): an Euler step down to sigma_down, then fresh noise of size sigma_up, so that
/// sigma_down^2 + sigma_up^2 = sigma_next^2 (k-diffusion's sample_euler_ancestral, eta 1).
/// </summary>
public sealed class EulerAncestralSampler : Sampler
{
    public override string Name => "Euler a";
    public override string ShortName => "euler_a";
    public override bool IsStochastic => true;
    public override SamplerPlan Plan(NoiseSchedule schedule, int steps) => SamplerPlans.KDiffusion(schedule, steps);

    /// <summary>The deterministic (down) and stochastic (up) parts of the step from sigma to sigmaNext.</summary>
    public static (double Down, double Up) AncestralSigmas(double sigma, double sigmaNext)
    {
        double up = Math.Sqrt(sigmaNext * sigmaNext * (sigma * sigma - sigmaNext * sigmaNext) / (sigma * sigma));
        return (Math.Sqrt(sigmaNext * sigmaNext - up * up), up);
    }

    public static Tensor Step(Tensor x, Tensor denoised, double sigma, double sigmaNext, Tensor noise)
    {
        var (down, up) = AncestralSigmas(sigma, sigmaNext);
        return x + (x - denoised) * ((down - sigma) / sigma) + noise * up;
    }

    protected override Tensor Run(SamplingRun run, Tensor x)
    {
        var sigmas = run.Sigmas;
        for (int i = 0; i < run.Timesteps.Count; i++)
        {
            using var scope = NewDisposeScope();
            var denoised = run.Denoise(x, sigmas[i], run.Timesteps[i]);
            var next = Step(x, denoised, sigmas[i], sigmas[i + 1], run.Noise(x));
            run.Report(next, denoised);
            x = SamplingRun.Replace(x, next);
        }
        return x;
    }
}
