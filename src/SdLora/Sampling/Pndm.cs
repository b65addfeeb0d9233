using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>
/// PLMS, the pseudo linear multistep part of PNDM (Liu et al. 2022) as SD uses it (skip_prk_steps): an
/// Adams-Bashforth combination of the last four epsilons drives the pseudo-numerical transfer step. The
/// warm-up evaluates the second timestep twice (a Heun-like correction), so n steps take n+1 model calls.
/// </summary>
public sealed class PndmSampler : Sampler
{
    public override string Name => "PLMS";
    public override string ShortName => "plms";

    public override SamplerPlan Plan(NoiseSchedule schedule, int steps)
    {
        var t = schedule.SpacedTimesteps(steps);
        var calls = steps == 1 ? t : t.Take(2).Concat(t.Skip(1)).ToArray();
        return new(calls, null, 1.0);
    }

    /// <summary>The transfer step phi(x_t, eps, t -> t_prev) of PNDM eq. 9.</summary>
    public static Tensor Step(Tensor x, Tensor eps, double alphaCumprod, double alphaCumprodPrev)
    {
        double xCoeff = Math.Sqrt(alphaCumprodPrev / alphaCumprod);
        double denom = alphaCumprod * Math.Sqrt(1 - alphaCumprodPrev) + Math.Sqrt(alphaCumprod * (1 - alphaCumprod) * alphaCumprodPrev);
        return x * xCoeff - eps * ((alphaCumprodPrev - alphaCumprod) / denom);
    }

    /// <summary>Adams-Bashforth combination of the epsilons (newest last) of orders 1 to 4.</summary>
    public static Tensor Combine(IReadOnlyList<Tensor> e) => e.Count switch
    {
        1 => e[^1],
        2 => (e[^1] * 3 - e[^2]) / 2,
        3 => (e[^1] * 23 - e[^2] * 16 + e[^3] * 5) / 12,
        _ => (e[^1] * 55 - e[^2] * 59 + e[^3] * 37 - e[^4] * 9) / 24,
    };

    protected override Tensor Run(SamplingRun run, Tensor x)
    {
        var schedule = run.Schedule;
        int stride = run.Stride;
        var outputs = new List<Tensor>(); // newest last
        Tensor? warmupStart = null;
        for (int i = 0; i < run.Timesteps.Count; i++)
        {
            using var scope = NewDisposeScope();
            double t = run.Timesteps[i], from = t, to = t - stride;
            var output = run.Model(x, t);
            Tensor combined, start = x;
            if (i == 1)
            {   // warm-up correction: redo the first step from its start with the mean of both outputs
                (from, to) = (t + stride, t);
                combined = (output + outputs[^1]) / 2;
                start = warmupStart!;
            }
            else
            {
                outputs.Add(output.MoveToOuterDisposeScope());
                if (outputs.Count > 4) { outputs[0].Dispose(); outputs.RemoveAt(0); }
                combined = Combine(outputs);
                if (i == 0) warmupStart = x.clone().MoveToOuterDisposeScope();
            }
            double acp = schedule.AlphaCumprodAt((int)from);
            double acpPrev = to >= 0 ? schedule.AlphaCumprodAt((int)to) : schedule.FinalAlphaCumprod;
            var (_, eps) = run.Predict(start, combined, acp);
            var next = Step(start, eps, acp, acpPrev);
            run.Report(next);
            x = SamplingRun.Replace(x, next);
        }
        warmupStart?.Dispose();
        foreach (var o in outputs) o.Dispose();
        return x;
    }
}
