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
            foreach (var (i, p, grad) in WithGradients(g))
            {
                var m = State(g, i, "exp_avg");
                if (WeightDecay != 0) p.mul_(1 - lr * WeightDecay);
                var direction = (m * Beta1).add_(grad, 1 - Beta1).sign_();
                p.add_(direction, -lr);
                m.mul_(Beta2).add_(grad, 1 - Beta2);
            }
        }
    }
}
