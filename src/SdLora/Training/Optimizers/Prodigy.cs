using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Training.Optimizers;

/// <summary>
/// Prodigy (Mishchenko &amp; Defazio 2023, arXiv:2306.06101): Adam whose step size <c>d</c> is estimated
/// from how far the weights moved against the gradients, so the LR is left at 1.0 (scale it with
/// <c>d_coef</c>). One <c>d</c> is shared by all groups and estimated with the largest group LR; unlike the
/// reference, groups with smaller non-zero LRs are allowed and take proportionally smaller steps.
/// </summary>
public sealed class Prodigy(IEnumerable<ParamGroup> groups, double beta1 = 0.9, double beta2 = 0.999, double? beta3 = null,
    double eps = 1e-8, double weightDecay = 0, bool decouple = true, bool useBiasCorrection = false, bool safeguardWarmup = false,
    double d0 = 1e-6, double dCoef = 1.0, double growthRate = double.PositiveInfinity) : TrainingOptimizer(groups)
{
    public double Beta1 { get; } = beta1;
    public double Beta2 { get; } = beta2;
    public double Beta3 { get; } = beta3 ?? Math.Sqrt(beta2);
    public double Eps { get; } = eps;
    public double WeightDecay { get; } = weightDecay;
    public double D0 { get; } = d0;
    public double DCoef { get; } = dCoef;
    public double GrowthRate { get; } = growthRate;

    /// <summary>Current step-size estimate; effective LR of a group is <c>D * lr</c>.</summary>
    public double D { get; private set; } = d0;
    public double DMax { get; private set; } = d0;
    private double _dNumerator;

    public override string Describe() =>
        $"Prodigy(weight_decay={F(WeightDecay)},betas=({F(Beta1)},{F(Beta2)}),d_coef={F(DCoef)},d0={F(D0)},use_bias_correction={useBiasCorrection},safeguard_warmup={safeguardWarmup})";

    protected override IEnumerable<(string, double)> Scalars() => [("d", D), ("d_max", DMax), ("d_numerator", _dNumerator)];
    protected override void LoadScalar(string name, double value)
    {
        switch (name)
        {
            case "d": D = value; break;
            case "d_max": DMax = value; break;
            case "d_numerator": _dNumerator = value; break;
        }
    }

    protected override void Update(double lrMultiplier)
    {
        long k = StepCount - 1;
        double lr = Groups.Max(g => g.LearningRate) * lrMultiplier;
        double bias = useBiasCorrection ? Math.Sqrt(1 - Math.Pow(Beta2, k + 1)) / (1 - Math.Pow(Beta1, k + 1)) : 1;
        double d = D, dlr = d * lr * bias;
        double numerator = _dNumerator * Beta3, deltaNumerator = 0, denom = 0;

        for (int g = 0; g < Groups.Count; g++)
        {
            if (Groups[g].LearningRate == 0) continue;
            foreach (var (i, p, rawGrad) in WithGradients(g))
            {
                var grad = WeightDecay != 0 && !decouple ? rawGrad + p * WeightDecay : rawGrad;
                var p0 = State(g, i, "p0", () => p.detach().clone());
                var s = State(g, i, "s");
                var m = State(g, i, "exp_avg");
                var v = State(g, i, "exp_avg_sq");
                deltaNumerator += d / D0 * dlr * torch.dot(grad.flatten(), (p0 - p).flatten()).item<float>();
                m.mul_(Beta1).add_(grad, d * (1 - Beta1));
                v.mul_(Beta2).addcmul_(grad, grad, d * d * (1 - Beta2));
                s.mul_(Beta3).add_(grad, d / D0 * (safeguardWarmup ? d : dlr));
                denom += s.abs().sum().item<float>();
            }
        }
        if (denom == 0) return; // no gradients yet: nothing to learn d from

        if (lr > 0)
        {
            double dHat = DCoef * (numerator + deltaNumerator) / denom;
            if (d == D0) d = Math.Max(d, dHat);
            DMax = Math.Max(DMax, dHat);
            d = Math.Min(DMax, d * GrowthRate);
        }
        _dNumerator = numerator + deltaNumerator;
        D = d;

        for (int g = 0; g < Groups.Count; g++)
        {
            if (Groups[g].LearningRate == 0) continue;
            // The update uses the step size of this round (before the new d), as the reference does.
            double groupDlr = dlr * (Groups[g].LearningRate * lrMultiplier / lr);
            foreach (var (i, p, _) in WithGradients(g))
            {
                var m = State(g, i, "exp_avg");
                var v = State(g, i, "exp_avg_sq");
                var den = v.sqrt().add_(d * Eps);
                if (WeightDecay != 0 && decouple) p.add_(p, -WeightDecay * groupDlr);
                p.addcdiv_(m, den, -groupDlr);
            }
        }
    }
}
