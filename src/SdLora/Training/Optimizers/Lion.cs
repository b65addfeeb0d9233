// Why we keep this: no .NET library has Lion; it shares our optimizer base, so its state resumes exactly like AdamW's (docs/libraries.md).
using TorchSharp;

namespace SdLora.Training.Optimizers;

/// <summary>
/// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the step is the sign of an
/// interpolation between momentum and gradient. Typical LR is 3-10x smaller than AdamW's.
/// </summary>
public sealed class Lion(IEnumerable<ParamGroup> groups, double beta1 = 0.9, double beta2 = 0.99, double weightDecay = 0)
    : TrainingOptimizer(groups)
{
    public double Beta1 { get; } = beta1;
    public double Beta2 { get; } = beta2;
    public double WeightDecay { get; } = weightDecay;

    public override string Describe() => $"Lion(weight_decay={F(WeightDecay)},betas=({F(Beta1)},{F(Beta2)}))";

    protected override void Update(double lrMultiplier)
    {
        for (int g = 0; g < Groups.Count; g++)
        {
            double lr = Groups[g].LearningRate * lrMultiplier;
            // Held for the loop, as in AdamW (TorchSharp 0.107 may free a temporary scalar during its call).
            using var decay = (1 - lr * WeightDecay).ToScalar();
            using var beta1 = Beta1.ToScalar();
            using var oneMinusBeta1 = (1 - Beta1).ToScalar();
            using var beta2 = Beta2.ToScalar();
            using var oneMinusBeta2 = (1 - Beta2).ToScalar();
            using var step = (-lr).ToScalar();
            foreach (var (i, p, grad) in WithGradients(g))
            {
                var m = State(g, i, "exp_avg");
                if (WeightDecay != 0) p.mul_(decay);
                var direction = m.mul(beta1).add_(grad, oneMinusBeta1).sign_();
                p.add_(direction, step);
                m.mul_(beta2).add_(grad, oneMinusBeta2);
            }
        }
    }
}
