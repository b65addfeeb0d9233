using System.Diagnostics;
using SdLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Benchmarks;

/// <summary>Exclusive wall time of one kind of module in a profiled run (its own work, not its children's).</summary>
public sealed record ModuleTime(string Kind, double Seconds, int Calls, double GFlop)
{
    public double GFlopsPerSecond => Seconds > 0 && GFlop > 0 ? GFlop / Seconds : 0;
}

/// <summary>
/// Per-op timers for a model, from forward hooks: every module's time minus its children's is charged to its kind
/// (AdaptableConv2d, AdaptableLinear, GroupNorm, LayerNorm; the rest of Attention is the fused attention kernel and its
/// reshapes; of ResnetBlock2D the SiLUs and sums; ...). Convs and linears also count their FLOPs from the output shapes,
/// so each kind reads as GFLOP/s. Hooks add a little overhead per call; use it for shares, not for the headline time.
/// </summary>
public sealed class ModuleProfiler : IDisposable
{
    private readonly List<Action> _removers = [];
    private readonly Stack<(long Start, double Children)> _stack = new();
    private readonly Dictionary<string, (double Seconds, int Calls, double GFlop)> _totals = [];

    public ModuleProfiler(nn.Module model)
    {
        foreach (var (_, module) in model.named_modules())
        {
            var kind = module.GetType().Name;
            // The untyped hooks live on each Module<...> arity's base class: found by name.
            var pre = Register(module, "register_forward_pre_hook", _ => _stack.Push((Stopwatch.GetTimestamp(), 0)));
            var post = Register(module, "register_forward_hook", _ =>
            {
                var (start, children) = _stack.Pop();
                double inclusive = Stopwatch.GetElapsedTime(start).TotalSeconds;
                Charge(kind, inclusive - children, 1, 0);
                if (_stack.Count > 0)
                {
                    var parent = _stack.Pop();
                    _stack.Push((parent.Start, parent.Children + inclusive));
                }
            });
            if (pre is null || post is null) continue;
            _removers.Add(pre);
            _removers.Add(post);
            // FLOPs from the output shape (2 per multiply-add).
            if (module is AdaptableConv2d conv)
            {
                var flops = conv.register_forward_hook((m, input, output) =>
                {
                    Charge(kind, 0, 0, 2.0 * output.numel() * conv.InChannels * conv.KernelSize * conv.KernelSize / 1e9);
                    return output;
                });
                _removers.Add(() => flops.remove());
            }
            else if (module is AdaptableLinear linear)
            {
                var flops = linear.register_forward_hook((m, input, output) =>
                {
                    Charge(kind, 0, 0, 2.0 * output.numel() * linear.InFeatures / 1e9);
                    return output;
                });
                _removers.Add(() => flops.remove());
            }
        }
    }

    /// <summary>Registers an <c>Action&lt;Module&gt;</c> hook; returns its remover, or null for a module without hooks.</summary>
    private static Action? Register(nn.Module module, string method, Action<nn.Module> hook)
    {
        var register = module.GetType().GetMethods()
            .FirstOrDefault(m => m.Name == method && m.GetParameters() is [var p] && p.ParameterType == typeof(Action<nn.Module>));
        if (register?.Invoke(module, [hook]) is not { } remover) return null;
        var remove = remover.GetType().GetMethod("remove");
        return () => remove?.Invoke(remover, null);
    }

    private void Charge(string kind, double seconds, int calls, double gflop)
    {
        var (s, c, g) = _totals.GetValueOrDefault(kind);
        _totals[kind] = (s + seconds, c + calls, g + gflop);
    }

    public void Reset() => _totals.Clear();

    /// <summary>Every kind, most time first.</summary>
    public IReadOnlyList<ModuleTime> Times => _totals.Select(kv => new ModuleTime(kv.Key, kv.Value.Seconds, kv.Value.Calls, kv.Value.GFlop))
        .OrderByDescending(t => t.Seconds).ToList();

    public void Dispose()
    {
        foreach (var remove in _removers) remove();
    }
}
