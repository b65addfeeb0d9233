using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>
/// The model as a sampler sees it: given the (already scaled) model input and the timestep (a 0-d float32
/// tensor on the input's device), returns the raw model output — epsilon or v per the schedule's
/// prediction type. Classifier-free guidance lives inside the delegate.
/// </summary>
public delegate Tensor Denoiser(Tensor modelInput, Tensor timestep);

/// <summary>
/// What a sampler will do for a step count: the timestep of every model call in order (so its length is the
/// number of model calls), the sigma schedule where the sampler has one (with its final entry), and the
/// factor the initial N(0,1) noise is multiplied by.
/// </summary>
public sealed record SamplerPlan(IReadOnlyList<double> Timesteps, IReadOnlyList<double>? Sigmas, double InitNoiseSigma)
{
    public int ModelCalls => Timesteps.Count;
}

/// <summary>
/// One model evaluation and the update that followed it. The tensors are valid only during the callback and
/// it runs inside the step's dispose scope: keep a tensor with <c>t.clone().MoveToOuterDisposeScope()</c>. <see cref="Sample"/> is the sampler's state after the update, in the space
/// diffusers' scheduler returns (<c>prev_sample</c>).
/// </summary>
public sealed record SamplerStep(int Index, int Total, double Timestep, Tensor ModelInput, Tensor ModelOutput,
    Tensor Sample, Tensor? PredOriginalSample);

/// <summary>Progress after each model call: <see cref="Step"/> of <see cref="Total"/> done.</summary>
public readonly record struct SamplingProgress(int Step, int Total, double Timestep);

public interface ISampler
{
    /// <summary>The AUTOMATIC1111 name ("Euler a"), used in PNG parameters.</summary>
    string Name { get; }
    /// <summary>The short CLI form (<c>euler_a</c>).</summary>
    string ShortName { get; }
    /// <summary>True when the sampler draws fresh noise during sampling (needs an <see cref="INoiseSource"/>).</summary>
    bool IsStochastic { get; }
    SamplerPlan Plan(NoiseSchedule schedule, int steps);
    /// <summary>
    /// Runs the whole reverse process from N(0,1) <paramref name="initialNoise"/> (multiplied by the init noise
    /// sigma here) and returns the final latents. Stochastic samplers without <paramref name="noise"/> use seed 0. Throws <see cref="OperationCanceledException"/> between model calls.
    /// </summary>
    Tensor Sample(Denoiser model, Tensor initialNoise, NoiseSchedule schedule, int steps, INoiseSource? noise = null,
        IProgress<SamplingProgress>? progress = null, CancellationToken ct = default, Action<SamplerStep>? onStep = null);
}

/// <summary>
/// The shared loop plumbing: validation, init noise scaling, no_grad, and the per-model-call bookkeeping in
/// <see cref="SamplingRun"/>. Subclasses only write their update rule.
/// </summary>
public abstract class Sampler : ISampler
{
    public abstract string Name { get; }
    public abstract string ShortName { get; }
    public virtual bool IsStochastic => false;
    public abstract SamplerPlan Plan(NoiseSchedule schedule, int steps);
    protected abstract Tensor Run(SamplingRun run, Tensor x);

    public Tensor Sample(Denoiser model, Tensor initialNoise, NoiseSchedule schedule, int steps, INoiseSource? noise = null,
        IProgress<SamplingProgress>? progress = null, CancellationToken ct = default, Action<SamplerStep>? onStep = null)
    {
        if (steps < 1 || steps > schedule.NumTrainTimesteps)
            throw new SdLoraException($"steps {steps} is out of range for {Name}: use 1 to {schedule.NumTrainTimesteps}");
        using var noGrad = torch.no_grad();
        var plan = Plan(schedule, steps);
        using var fallbackNoise = noise is null && IsStochastic ? new SeededNoise(0) : null;
        var run = new SamplingRun(model, schedule, steps, plan, noise ?? fallbackNoise ?? NoNoise, progress, ct, onStep);
        return Run(run, initialNoise * plan.InitNoiseSigma);
    }

    public override string ToString() => Name;

    private static readonly INoiseSource NoNoise = new FixedNoise([]);
}

/// <summary>State of one sampling run that every update rule needs: the plan, model calls and reporting.</summary>
public sealed class SamplingRun
{
    private readonly Denoiser _model;
    private readonly INoiseSource _noise;
    private readonly IProgress<SamplingProgress>? _progress;
    private readonly CancellationToken _ct;
    private readonly Action<SamplerStep>? _onStep;
    private int _calls;
    private (double T, Tensor Input, Tensor Output)? _last;

    public NoiseSchedule Schedule { get; }
    public SamplerPlan Plan { get; }
    /// <summary>The requested step count (model calls may differ: PLMS, Heun).</summary>
    public int Steps { get; }
    /// <summary>Training timesteps per inference step (diffusers' <c>num_train_timesteps // steps</c>).</summary>
    public int Stride => Schedule.NumTrainTimesteps / Steps;
    public IReadOnlyList<double> Timesteps => Plan.Timesteps;
    public IReadOnlyList<double> Sigmas => Plan.Sigmas ?? throw new InvalidOperationException("this plan has no sigmas");

    internal SamplingRun(Denoiser model, NoiseSchedule schedule, int steps, SamplerPlan plan, INoiseSource noise,
        IProgress<SamplingProgress>? progress, CancellationToken ct, Action<SamplerStep>? onStep)
    {
        _model = model; Schedule = schedule; Steps = steps; Plan = plan; _noise = noise; _progress = progress; _ct = ct; _onStep = onStep;
    }

    /// <summary>Evaluates the model once at timestep <paramref name="t"/>; the output has the input's dtype.</summary>
    public Tensor Model(Tensor modelInput, double t)
    {
        _ct.ThrowIfCancellationRequested();
        using var timestep = torch.tensor((float)t, ScalarType.Float32, modelInput.device);
        var output = _model(modelInput, timestep).to(modelInput.dtype);
        _last = (t, modelInput, output);
        return output;
    }

    /// <summary>A fresh N(0,1) tensor shaped like <paramref name="like"/>.</summary>
    public Tensor Noise(Tensor like) => _noise.Next(like.shape, like.dtype, like.device);

    /// <summary>Reports the update that followed the last model call (callback + progress).</summary>
    public void Report(Tensor sample, Tensor? predOriginalSample = null)
    {
        var (t, input, output) = _last ?? throw new InvalidOperationException("Report before Model");
        _calls++;
        _onStep?.Invoke(new SamplerStep(_calls - 1, Plan.ModelCalls, t, input, output, sample, predOriginalSample));
        _progress?.Report(new SamplingProgress(_calls, Plan.ModelCalls, t));
        _last = null;
    }

    /// <summary>Keeps <paramref name="next"/> past the current step's dispose scope and frees <paramref name="old"/>.</summary>
    public static Tensor Replace(Tensor? old, Tensor next)
    {
        var kept = next.MoveToOuterDisposeScope();
        if (!ReferenceEquals(old, kept)) old?.Dispose();
        return kept;
    }

    /// <summary>
    /// Variance-preserving view (x = alpha x0 + sigma eps, alpha^2 + sigma^2 = 1): the predicted x0 and
    /// epsilon from a model output, for epsilon or v prediction.
    /// </summary>
    public (Tensor X0, Tensor Eps) Predict(Tensor x, Tensor output, double alphaCumprod)
    {
        double a = Math.Sqrt(alphaCumprod), s = Math.Sqrt(1 - alphaCumprod);
        return Schedule.PredictionType == PredictionType.Epsilon
            ? ((x - output * s) / a, output)
            : (x * a - output * s, output * a + x * s);
    }

    /// <summary>The k-diffusion denoiser D(x, sigma) over an epsilon or v model: returns the predicted x0.</summary>
    public Tensor Denoise(Tensor x, double sigma, double t)
    {
        double cIn = 1 / Math.Sqrt(sigma * sigma + 1);
        var output = Model(x * cIn, t);
        return Schedule.PredictionType == PredictionType.Epsilon
            ? x - sigma * output
            : x * (cIn * cIn) - output * (sigma * cIn);
    }
}
