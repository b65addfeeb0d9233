// Why we keep this (not TorchSharp's torch.optim.AdamW, whose update is bit-identical): our state resumes from named safetensors on the base Lion and Prodigy share; TorchSharp keeps it per parameter handle in its own binary format (docs/libraries.md).
using static TorchSharp.torch;

namespace SdLora.Training.Optimizers;

/// <summary>
/// AdamW (Loshchilov &amp; Hutter), the same update as <c>torch.optim.AdamW</c>: decoupled weight decay
/// <c>p *= 1 - lr*wd</c>, then Adam with bias correction.
/// </summary>
public sealed class AdamW(IEnumerable<ParamGroup> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weightDecay = 0.01)
    : TrainingOptimizer(groups)
{
    public double Beta1 { get; } = beta1;
    public double Beta2 { get; } = beta2;
    public double Eps { get; } = eps;
    public double WeightDecay { get; } = weightDecay;

    public override string Describe() => $"AdamW(weight_decay={F(WeightDecay)},betas=({F(Beta1)},{F(Beta2)}),eps={F(Eps)})";

    protected override void Update(double lrMultiplier)
    {
        double bc1 = 1 - Math.Pow(Beta1, StepCount), bc2 = 1 - Math.Pow(Beta2, StepCount);
        for (int g = 0; g < Groups.Count; g++)
        {
            double lr = Groups[g].LearningRate * lrMultiplier;
            foreach (var (i, p, grad) in WithGradients(g))
            {
                var m = State(g, i, "exp_avg");
                var v = State(g, i, "exp_avg_sq");
                if (WeightDecay != 0) p.mul_(1 - lr * WeightDecay);
                m.mul_(Beta1).add_(grad, 1 - Beta1);
                v.mul_(Beta2).addcmul_(grad, grad, 1 - Beta2);
                var denom = (v.sqrt() / Math.Sqrt(bc2)).add_(Eps);
                p.addcdiv_(m, denom, -lr / bc1);
            }
        }
    }
}
