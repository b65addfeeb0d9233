using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Training.Optimizers;

/// <summary>Parameters trained with one base learning rate (e.g. the UNet LoRA vs the text-encoder LoRA).</summary>
public sealed record ParamGroup(string Name, IReadOnlyList<Parameter> Parameters, double LearningRate);

/// <summary>
/// Base of sdlora's optimizers. They are written here rather than wrapping <c>torch.optim</c> so every
/// optimizer has per-group learning rates driven by a schedule multiplier and a plain tensor state
/// (<see cref="StateDict"/>) that resumes through safetensors like everything else.
/// <para>
/// Parameters held in bf16/fp16 (a fine-tuned model computing in bf16) are updated through an fp32 master copy kept in
/// the state (<c>master</c>): steps far below bf16's resolution still add up, and the model's weight is the master
/// rounded once per step. fp32 parameters (every LoRA) are updated in place, with no copy.
/// </para>
/// </summary>
public abstract class TrainingOptimizer : IDisposable
{
    private readonly Dictionary<(int Group, int Param), Dictionary<string, Tensor>> _state = [];
    private readonly HashSet<int> _frozen = [];

    public IReadOnlyList<ParamGroup> Groups { get; }
    /// <summary>Steps taken so far (restored by <see cref="LoadStateDict"/>).</summary>
    public long StepCount { get; protected set; }
    /// <summary>Learning rates used by the last step, per group.</summary>
    public double[] LastLearningRates { get; }

    protected TrainingOptimizer(IEnumerable<ParamGroup> groups)
    {
        Groups = groups.ToList();
        if (Groups.Count == 0) throw new ArgumentException("an optimizer needs at least one parameter group");
        LastLearningRates = Groups.Select(g => g.LearningRate).ToArray();
    }

    /// <summary>Short form for kohya's <c>ss_optimizer</c>, e.g. <c>AdamW(weight_decay=0.01,betas=(0.9,0.999),eps=1e-08)</c>.</summary>
    public abstract string Describe();

    /// <summary>Applies one update with each group's LR times <paramref name="lrMultiplier"/> (from the LR schedule).</summary>
    public void Step(double lrMultiplier = 1.0)
    {
        StepCount++;
        for (int g = 0; g < Groups.Count; g++) LastLearningRates[g] = Groups[g].LearningRate * lrMultiplier;
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        Update(lrMultiplier);
    }

    protected abstract void Update(double lrMultiplier);

    /// <summary>
    /// Stops training the group called <paramref name="groupName"/> (kohya's <c>stop_text_encoder_training</c>): its
    /// parameters are left alone from now on, whatever their gradients; their state is kept (and saved).
    /// </summary>
    public void Freeze(string groupName)
    {
        for (int g = 0; g < Groups.Count; g++)
            if (Groups[g].Name == groupName) _frozen.Add(g);
    }

    public void ZeroGrad()
    {
        // Each p.grad is a new wrapper: the scope keeps it reachable until its native call has returned (a wrapper left to
        // the finalizer can be freed during that call; seen as segfaults in zeros_out in long toy builds) and frees it after.
        using var scope = torch.NewDisposeScope();
        foreach (var g in Groups)
            foreach (var p in g.Parameters)
                p.grad?.zero_();
    }

    /// <summary>
    /// Per-parameter state tensor, created on first use and kept outside dispose scopes: <paramref name="init"/>, or zeros
    /// of <see cref="StateShape"/> (fp32 for a low-precision parameter).
    /// </summary>
    protected Tensor State(int group, int param, string name, Func<Tensor>? init = null)
    {
        if (!_state.TryGetValue((group, param), out var d)) _state[(group, param)] = d = [];
        if (!d.TryGetValue(name, out var t))
        {
            var p = Groups[group].Parameters[param];
            var shape = StateShape(group, param, name);
            t = init is not null ? init()
                : IsFullPrecision(p) && shape.SequenceEqual(p.shape) ? torch.zeros_like(p)
                : torch.zeros(shape, IsFullPrecision(p) ? p.dtype : ScalarType.Float32, p.device);
            t.DetachFromDisposeScope();
            d[name] = t;
        }
        return t;
    }

    /// <summary>Shape of a state tensor (the parameter's, unless an optimizer keeps something smaller, like Adafactor's factors).</summary>
    protected virtual long[] StateShape(int group, int param, string name) => Groups[group].Parameters[param].shape;

    private static bool IsFullPrecision(Tensor p) => p.dtype is ScalarType.Float32 or ScalarType.Float64;

    /// <summary>
    /// The parameters of group <paramref name="group"/> that have a gradient, with that gradient, as tensors to update in
    /// place. An fp32 parameter is given as it is; a bf16/fp16 one as its fp32 master copy with the gradient in fp32,
    /// and the master is rounded into the parameter once the caller's loop body for it has run.
    /// </summary>
    protected IEnumerable<(int Index, Tensor Param, Tensor Grad)> WithGradients(int group)
    {
        if (_frozen.Contains(group)) yield break;
        var parameters = Groups[group].Parameters;
        for (int i = 0; i < parameters.Count; i++)
        {
            var p = parameters[i];
            if (p.grad is not { } grad) continue;
            // The caller's temporaries for this parameter die before the next one: a full fine-tune's would otherwise
            // add up to several copies of the model within one step.
            using var scope = torch.NewDisposeScope();
            if (IsFullPrecision(p))
            {
                yield return (i, p, grad);
                continue;
            }
            var master = State(group, i, "master", () => p.detach().to(ScalarType.Float32));
            yield return (i, master, grad.to(ScalarType.Float32));
            p.copy_(master);
        }
    }

    /// <summary>The fp32 value a parameter is trained as: its master copy when it has one, else itself.</summary>
    public Tensor TrainedValue(int group, int param) =>
        _state.TryGetValue((group, param), out var d) && d.TryGetValue("master", out var m) ? m : Groups[group].Parameters[param];

    /// <summary>Scalar state (step count, Prodigy's d, ...), saved as float64 tensors.</summary>
    protected virtual IEnumerable<(string Name, double Value)> Scalars() => [];
    protected virtual void LoadScalar(string name, double value) { }

    /// <summary>All state as named tensors: <c>g0.p3.exp_avg</c>, <c>step</c>, ...</summary>
    public Dictionary<string, Tensor> StateDict()
    {
        var d = new Dictionary<string, Tensor> { ["step"] = torch.tensor(new double[] { StepCount }) };
        foreach (var (name, value) in Scalars()) d[name] = torch.tensor(new double[] { value });
        foreach (var ((g, p), tensors) in _state)
            foreach (var (name, t) in tensors) d[$"g{g}.p{p}.{name}"] = t;
        return d;
    }

    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> state)
    {
        foreach (var (key, t) in state)
        {
            if (key == "step") { StepCount = (long)t.to(ScalarType.Float64).item<double>(); continue; }
            var parts = key.Split('.', 3);
            if (parts.Length == 3 && parts[0][0] == 'g' && parts[1][0] == 'p'
                && int.TryParse(parts[0][1..], out int g) && int.TryParse(parts[1][1..], out int p))
            {
                if (g >= Groups.Count || p >= Groups[g].Parameters.Count || !StateShape(g, p, parts[2]).SequenceEqual(t.shape))
                    throw new SdLoraException($"optimizer state '{key}' does not match the network being trained (different network-dim or modules?): start without resume or with the same settings");
                var param = Groups[g].Parameters[p];
                var target = parts[2] == "master" ? State(g, p, "master", () => param.detach().to(ScalarType.Float32)) : State(g, p, parts[2]);
                using var noGrad = torch.no_grad();
                target.copy_(t);
            }
            else LoadScalar(key, t.to(ScalarType.Float64).item<double>());
        }
    }

    public void Save(string path) => Safetensors.Save(path, StateDict(), new Dictionary<string, string> { ["optimizer"] = Describe() });

    public void Load(string path)
    {
        using var f = SafetensorsFile.Open(path);
        using var scope = torch.NewDisposeScope();
        LoadStateDict(f.LoadAll());
    }

    public void Dispose()
    {
        foreach (var d in _state.Values) foreach (var t in d.Values) t.Dispose();
        _state.Clear();
        GC.SuppressFinalize(this);
    }

    protected static string F(double v) => v.ToString("G", System.Globalization.CultureInfo.InvariantCulture);
}
