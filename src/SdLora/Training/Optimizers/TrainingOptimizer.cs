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
/// </summary>
public abstract class TrainingOptimizer : IDisposable
{
    private readonly Dictionary<(int Group, int Param), Dictionary<string, Tensor>> _state = [];

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

    public void ZeroGrad()
    {
        foreach (var g in Groups)
            foreach (var p in g.Parameters)
                p.grad?.zero_();
    }

    /// <summary>Per-parameter state tensor, created (zeros, or <paramref name="init"/>) on first use and kept outside dispose scopes.</summary>
    protected Tensor State(int group, int param, string name, Func<Tensor>? init = null)
    {
        if (!_state.TryGetValue((group, param), out var d)) _state[(group, param)] = d = [];
        if (!d.TryGetValue(name, out var t))
        {
            var p = Groups[group].Parameters[param];
            t = init is null ? torch.zeros_like(p) : init();
            t.DetachFromDisposeScope();
            d[name] = t;
        }
        return t;
    }

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
                if (g >= Groups.Count || p >= Groups[g].Parameters.Count || !Groups[g].Parameters[p].shape.SequenceEqual(t.shape))
                    throw new SdLoraException($"optimizer state '{key}' does not match the network being trained (different network-dim or modules?): start without resume or with the same settings");
                var target = State(g, p, parts[2]);
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
