using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>
/// DDIM (Song et al. 2020, eq. 12): from the predicted x0 and epsilon, jump to the previous timestep's
/// marginal; eta 0 is deterministic, eta 1 has DDPM's variance (then fresh noise is drawn each step).
/// </summary>
public sealed class DdimSampler : Sampler
{
    public double Eta { get; }
    public DdimSampler(double eta = 0) => Eta = eta >= 0 ? eta : throw new SdLoraException($"DDIM eta {eta} is negative: use 0 (deterministic) to 1");

    public override string Name => "DDIM";
    public override string ShortName => "ddim";
    public override bool IsStochastic => Eta > 0;
    public override SamplerPlan Plan(NoiseSchedule schedule, int steps) => SamplerPlans.Discrete(schedule, steps);

    public static Tensor Step(Tensor x0, Tensor eps, double alphaCumprod, double alphaCumprodPrev, double eta = 0, Tensor? noise = null)
    {
        double variance = (1 - alphaCumprodPrev) / (1 - alphaCumprod) * (1 - alphaCumprod / alphaCumprodPrev);
        double std = eta * Math.Sqrt(variance);
        var prev = x0 * Math.Sqrt(alphaCumprodPrev) + eps * Math.Sqrt(1 - alphaCumprodPrev - std * std);
        return noise is null || std == 0 ? prev : prev + noise * std;
    }

    protected override Tensor Run(SamplingRun run, Tensor x)
    {
        var schedule = run.Schedule;
        foreach (var t in run.Timesteps)
        {
            using var scope = NewDisposeScope();
            int prevT = (int)t - run.Stride;
            double acp = schedule.AlphaCumprodAt((int)t);
            double acpPrev = prevT >= 0 ? schedule.AlphaCumprodAt(prevT) : schedule.FinalAlphaCumprod;
            var (x0, eps) = run.Predict(x, run.Model(x, t), acp);
            var next = Step(x0, eps, acp, acpPrev, Eta, Eta > 0 ? run.Noise(x) : null);
            run.Report(next, x0);
            x = SamplingRun.Replace(x, next);
        }
        return x;
    }
}
