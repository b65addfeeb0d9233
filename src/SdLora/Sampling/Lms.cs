using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>
/// Linear multistep (order 4): the slope (x - D(x))/sigma of the last few steps, weighted by integrating
/// their Lagrange polynomial in sigma over the current step (diffusers' LMSDiscreteScheduler).
/// </summary>
public sealed class LmsSampler : Sampler
{
    public const int Order = 4;
    public override string Name => "LMS";
    public override string ShortName => "lms";
    public override SamplerPlan Plan(NoiseSchedule schedule, int steps) => SamplerPlans.KDiffusion(schedule, steps);

    /// <summary>Weight of the slope taken at step i - j, for a step from sigmas[i] to sigmas[i+1] using <paramref name="order"/> slopes.</summary>
    public static double Coefficient(IReadOnlyList<double> sigmas, int i, int order, int j)
    {
        double Lagrange(double tau)
        {
            double prod = 1;
            for (int k = 0; k < order; k++)
                if (k != j) prod *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k]);
            return prod;
        }
        // 4-point Gauss-Legendre is exact for the cubic (at most) Lagrange polynomial.
        double a = sigmas[i], b = sigmas[i + 1], mid = (a + b) / 2, half = (b - a) / 2;
        ReadOnlySpan<double> nodes = [-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526];
        ReadOnlySpan<double> weights = [0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538];
        double sum = 0;
        for (int q = 0; q < nodes.Length; q++) sum += weights[q] * Lagrange(mid + half * nodes[q]);
        return sum * half;
    }

    protected override Tensor Run(SamplingRun run, Tensor x)
    {
        var sigmas = run.Sigmas;
        var slopes = new List<Tensor>(); // newest last
        for (int i = 0; i < run.Timesteps.Count; i++)
        {
            using var scope = NewDisposeScope();
            var denoised = run.Denoise(x, sigmas[i], run.Timesteps[i]);
            slopes.Add(((x - denoised) / sigmas[i]).MoveToOuterDisposeScope());
            if (slopes.Count > Order) { slopes[0].Dispose(); slopes.RemoveAt(0); }
            int order = Math.Min(i + 1, Order);
            var next = x;
            for (int j = 0; j < order; j++) next = next + slopes[^(j + 1)] * Coefficient(sigmas, i, order, j);
            run.Report(next, denoised);
            x = SamplingRun.Replace(x, next);
        }
        foreach (var s in slopes) s.Dispose();
        return x;
    }
}
