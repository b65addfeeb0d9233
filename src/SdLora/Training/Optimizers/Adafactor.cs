using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Training.Optimizers;

/// <summary>
/// Adafactor (Shazeer &amp; Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"): Adam without
/// the first moment (unless <c>beta1</c> is given) and with the second moment of a matrix kept as its row and column
/// means, so a weight of <c>n x m</c> needs <c>n + m</c> numbers of state instead of <c>2nm</c>. That is what makes a full
/// fine-tune of SD1.5's 860M-parameter UNet fit in a third of AdamW's memory.
/// <para>
/// One step for a parameter <c>W</c> with gradient <c>G</c> at step <c>t</c>:
/// <c>beta2_t = 1 - t^decay_rate</c>; <c>R = beta2_t R + (1 - beta2_t) rowmean(G^2 + eps1)</c>,
/// <c>C = beta2_t C + (1 - beta2_t) colmean(G^2 + eps1)</c> (over the last two dimensions; vectors keep the full
/// <c>V</c>); <c>U = G / sqrt(R C^T / mean(R))</c>; <c>U /= max(1, RMS(U) / clip_threshold)</c>; the step is
/// <c>lr_t U</c> (averaged with <c>beta1</c> when given), after decoupled weight decay <c>W -= wd lr_t W</c>.
/// With <c>relative_step</c> (the default, as in transformers and kohya) the step size ignores the configured learning
/// rate: <c>rho_t = min(1e-2, 1/sqrt(t))</c> (<c>warmup_init</c>: <c>min(1e-6 t, 1/sqrt(t))</c>); with
/// <c>scale_parameter</c> (default) <c>lr_t = max(eps2, RMS(W)) rho_t</c>, so every tensor moves by a fraction of its
/// own scale. Without <c>relative_step</c>, <c>rho_t</c> is the scheduled learning rate.
/// </para>
/// The step count is the optimizer's (every trained parameter gets a gradient each step in sdlora's methods).
/// </summary>
public sealed class Adafactor(IEnumerable<ParamGroup> groups, bool relativeStep = true, bool scaleParameter = true, bool warmupInit = false,
    double? beta1 = null, double decayRate = -0.8, double clipThreshold = 1.0, double eps1 = 1e-30, double eps2 = 1e-3, double weightDecay = 0)
    : TrainingOptimizer(groups)
{
    public bool RelativeStep { get; } = relativeStep || warmupInit; // warmup_init only exists for relative steps (kohya turns it on)
    public bool ScaleParameter { get; } = scaleParameter;
    public bool WarmupInit { get; } = warmupInit;
    public double? Beta1 { get; } = beta1;
    public double DecayRate { get; } = decayRate;
    public double ClipThreshold { get; } = clipThreshold;
    public double Eps1 { get; } = eps1;
    public double Eps2 { get; } = eps2;
    public double WeightDecay { get; } = weightDecay;

    public override string Describe() =>
        $"Adafactor(relative_step={RelativeStep},scale_parameter={ScaleParameter},warmup_init={WarmupInit}" +
        (Beta1 is { } b ? $",beta1={F(b)}" : "") + $",decay_rate={F(DecayRate)},clip_threshold={F(ClipThreshold)},weight_decay={F(WeightDecay)})";

    private static bool Factored(long[] shape) => shape.Length >= 2;

    protected override long[] StateShape(int group, int param, string name)
    {
        var shape = Groups[group].Parameters[param].shape;
        return name switch
        {
            "exp_avg_sq_row" => shape[..^1],
            "exp_avg_sq_col" => [.. shape[..^2], shape[^1]],
            _ => shape,
        };
    }

    /// <summary>The relative step size rho_t (or the scheduled LR without relative steps).</summary>
    private double Rho(double scheduledLr) => RelativeStep
        ? Math.Min(WarmupInit ? 1e-6 * StepCount : 1e-2, 1.0 / Math.Sqrt(StepCount))
        : scheduledLr;

    private static Tensor Rms(Tensor t) => t.norm() / Math.Sqrt(t.numel());

    protected override void Update(double lrMultiplier)
    {
        double beta2t = 1.0 - Math.Pow(StepCount, DecayRate);
        for (int g = 0; g < Groups.Count; g++)
        {
            double rho = Rho(Groups[g].LearningRate * lrMultiplier);
            bool reported = false;
            foreach (var (i, p, grad) in WithGradients(g))
            {
                // lr_t as a 0-d tensor: no round trip to a double per parameter.
                var lr = ScaleParameter ? Rms(p).clamp_min(Eps2) * rho : torch.tensor(rho, ScalarType.Float32, p.device);
                if (!reported)
                {
                    LastLearningRates[g] = lr.item<float>(); // what transformers' AdafactorSchedule reports: the group's first tensor
                    reported = true;
                }
                var squared = grad * grad + Eps1;
                Tensor update;
                if (Factored(p.shape))
                {
                    var row = State(g, i, "exp_avg_sq_row");
                    var col = State(g, i, "exp_avg_sq_col");
                    row.mul_(beta2t).add_(squared.mean([-1]), 1 - beta2t);
                    col.mul_(beta2t).add_(squared.mean([-2]), 1 - beta2t);
                    var rowFactor = (row / row.mean([-1], keepdim: true)).rsqrt_().unsqueeze(-1);
                    var colFactor = col.unsqueeze(-2).rsqrt();
                    update = rowFactor * colFactor * grad;
                }
                else
                {
                    var v = State(g, i, "exp_avg_sq");
                    v.mul_(beta2t).add_(squared, 1 - beta2t);
                    update = v.rsqrt() * grad;
                }
                update.div_((Rms(update) / ClipThreshold).clamp_min(1.0));
                update.mul_(lr);
                if (Beta1 is { } b1)
                {
                    var m = State(g, i, "exp_avg");
                    m.mul_(b1).add_(update, 1 - b1);
                    update = m;
                }
                if (WeightDecay != 0) p.sub_(p * lr * WeightDecay);
                p.sub_(update);
            }
        }
    }
}
