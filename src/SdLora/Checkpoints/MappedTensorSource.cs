using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Checkpoints;

/// <summary>
/// Another source seen under new names: each exposed name reads one inner tensor, optionally reshaped
/// (LDM's 1x1-conv attention weights <c>[C,C,1,1]</c> as diffusers' <c>[C,C]</c>). Nothing is read until loaded.
/// </summary>
public sealed class MappedTensorSource : ITensorSource
{
    private readonly ITensorSource _inner;
    private readonly Dictionary<string, (string Source, long[]? Shape)> _map;
    private readonly List<string> _order;

    public MappedTensorSource(ITensorSource inner, IEnumerable<(string Name, string Source, long[]? Shape)> entries, string? description = null)
    {
        _inner = inner;
        _map = new Dictionary<string, (string, long[]?)>();
        _order = [];
        foreach (var (name, source, shape) in entries)
        {
            if (_map.TryAdd(name, (source, shape))) _order.Add(name);
        }
        Description = description ?? inner.Description;
    }

    public string Description { get; }
    /// <summary>The source the names map into.</summary>
    public ITensorSource Inner => _inner;
    public IEnumerable<string> Keys => _order;
    public bool Contains(string name) => _map.ContainsKey(name);

    /// <summary>The inner name a mapped name reads.</summary>
    public string SourceKeyOf(string name) => Entry(name).Source;

    public long[] ShapeOf(string name)
    {
        var e = Entry(name);
        return e.Shape ?? _inner.ShapeOf(e.Source);
    }

    public Tensor Load(string name, ScalarType? dtype = null)
    {
        var e = Entry(name);
        var t = _inner.Load(e.Source, dtype);
        if (e.Shape == null) return t;
        var r = t.reshape(e.Shape);
        if (!ReferenceEquals(r, t)) t.Dispose();
        return r;
    }

    /// <summary>Reads straight into <paramref name="target"/> (a reshape only changes the view, not the bytes).</summary>
    public void CopyInto(string name, Tensor target) => _inner.CopyInto(Entry(name).Source, target);
    public bool SupportsParallelReads => _inner.SupportsParallelReads;

    private (string Source, long[]? Shape) Entry(string name) =>
        _map.TryGetValue(name, out var e) ? e : throw new SdLoraException($"{Description}: has no tensor '{name}'");
}

/// <summary>A source with some names hidden (e.g. <c>position_ids</c> buffers that the models rebuild themselves).</summary>
public sealed class FilteredTensorSource(ITensorSource inner, Func<string, bool> keep) : ITensorSource
{
    public string Description => inner.Description;
    public ITensorSource Inner => inner;
    public IEnumerable<string> Keys => inner.Keys.Where(keep);
    public bool Contains(string name) => keep(name) && inner.Contains(name);
    public long[] ShapeOf(string name) => inner.ShapeOf(name);
    public Tensor Load(string name, ScalarType? dtype = null) => inner.Load(name, dtype);
    public void CopyInto(string name, Tensor target) => inner.CopyInto(name, target);
    public bool SupportsParallelReads => inner.SupportsParallelReads;
}
