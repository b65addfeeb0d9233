using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>
/// Ancestral DDPM (Ho et al. 2020, eq. 7) over the strided timesteps: the posterior mean of
/// q(x_prev | x_t, x0) plus fresh noise with the "fixed small" posterior variance.
/// </summary>
public sealed class DdpmSampler : Sampler
{
    public override string Name => "DDPM";
    public override string ShortName => "ddpm";
    public override bool IsStochastic => true;
    public override SamplerPlan Plan(NoiseSchedule schedule, int steps) => SamplerPlans.Discrete(schedule, steps);

    public static Tensor Step(Tensor x, Tensor x0, double alphaCumprod, double alphaCumprodPrev, Tensor? noise)
    {
        double alpha = alphaCumprod / alphaCumprodPrev, beta = 1 - alpha;
        double x0Coeff = Math.Sqrt(alphaCumprodPrev) * beta / (1 - alphaCumprod);
        double xCoeff = Math.Sqrt(alpha) * (1 - alphaCumprodPrev) / (1 - alphaCumprod);
        var mean = x0 * x0Coeff + x * xCoeff;
        if (noise is null) return mean;
        double variance = Math.Max((1 - alphaCumprodPrev) / (1 - alphaCumprod) * beta, 1e-20);
        return mean + noise * Math.Sqrt(variance);
    }

    protected override Tensor Run(SamplingRun run, Tensor x)
    {
        var schedule = run.Schedule;
        foreach (var t in run.Timesteps)
        {
            using var scope = NewDisposeScope();
            int prevT = (int)t - run.Stride;
            double acp = schedule.AlphaCumprodAt((int)t);
            double acpPrev = prevT >= 0 ? schedule.AlphaCumprodAt(prevT) : 1.0;
            var (x0, _) = run.Predict(x, run.Model(x, t), acp);
            var next = Step(x, x0, acp, acpPrev, t > 0 ? run.Noise(x) : null);
            run.Report(next, x0);
            x = SamplingRun.Replace(x, next);
        }
        return x;
    }
}
