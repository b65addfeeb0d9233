// Why we keep this (not TorchSharp's torch.optim.AdamW, whose update is bit-identical): our state resumes from named safetensors on the base Lion and Prodigy share; TorchSharp keeps it per parameter handle in its own binary format (docs/libraries.md).
using TorchSharp;
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
            // Scalars held for the whole loop (TorchSharp 0.107 lets a temporary one be freed during the call it was made for).
            using var decay = (1 - lr * WeightDecay).ToScalar();
            using var beta1 = Beta1.ToScalar();
            using var oneMinusBeta1 = (1 - Beta1).ToScalar();
            using var beta2 = Beta2.ToScalar();
            using var oneMinusBeta2 = (1 - Beta2).ToScalar();
            using var sqrtBc2 = Math.Sqrt(bc2).ToScalar();
            using var eps = Eps.ToScalar();
            using var step = (-lr / bc1).ToScalar();
            foreach (var (i, p, grad) in WithGradients(g))
            {
                var m = State(g, i, "exp_avg");
                var v = State(g, i, "exp_avg_sq");
                if (WeightDecay != 0) p.mul_(decay);
                m.mul_(beta1).add_(grad, oneMinusBeta1);
                v.mul_(beta2).addcmul_(grad, grad, oneMinusBeta2);
                var denom = v.sqrt().div_(sqrtBc2).add_(eps);
                p.addcdiv_(m, denom, step);
            }
        }
    }
}
