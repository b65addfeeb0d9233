using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.IO;

/// <summary>
/// A lazy, named collection of tensors: a safetensors file, a .ckpt state dict, or a renamed view of
/// another source (an LDM checkpoint seen through diffusers names). Tensors are read one at a time.
/// </summary>
public interface ITensorSource
{
    /// <summary>What to call this source in messages (usually a path).</summary>
    string Description { get; }
    IEnumerable<string> Keys { get; }
    bool Contains(string name);
    long[] ShapeOf(string name);
    /// <summary>Reads one tensor, converted to <paramref name="dtype"/> when given. The caller owns (disposes) it.</summary>
    Tensor Load(string name, ScalarType? dtype = null);

    /// <summary>Whether <see cref="CopyInto"/> may run on several threads at once (for different targets).</summary>
    bool SupportsParallelReads => false;

    /// <summary>
    /// Copies one tensor into <paramref name="target"/> (same number of elements; converted to the target's dtype).
    /// Sources that can, override it to write straight from the file into the target.
    /// </summary>
    void CopyInto(string name, Tensor target)
    {
        using var t = Load(name);
        using var shaped = t.reshape(target.shape);
        target.copy_(shaped);
    }
}

/// <summary>Tensors already in memory (fixtures, tests, freshly built weights).</summary>
public sealed class DictionaryTensorSource(IReadOnlyDictionary<string, Tensor> tensors, string description = "in-memory tensors") : ITensorSource
{
    public string Description { get; } = description;
    public IEnumerable<string> Keys => tensors.Keys;
    public bool Contains(string name) => tensors.ContainsKey(name);
    public long[] ShapeOf(string name) => tensors[name].shape;
    public Tensor Load(string name, ScalarType? dtype = null)
    {
        var t = tensors[name];
        return dtype is { } d && d != t.dtype ? t.to(d) : t.clone();
    }
}

/// <summary>A view of another source under a key prefix: <c>Prefixed(src, "unet.")</c> maps <c>conv_in.weight</c> to <c>unet.conv_in.weight</c>.</summary>
public sealed class PrefixedTensorSource(ITensorSource inner, string prefix) : ITensorSource
{
    public string Description => inner.Description;
    public IEnumerable<string> Keys => inner.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).Select(k => k[prefix.Length..]);
    public bool Contains(string name) => inner.Contains(prefix + name);
    public long[] ShapeOf(string name) => inner.ShapeOf(prefix + name);
    public Tensor Load(string name, ScalarType? dtype = null) => inner.Load(prefix + name, dtype);
    public void CopyInto(string name, Tensor target) => inner.CopyInto(prefix + name, target);
    public bool SupportsParallelReads => inner.SupportsParallelReads;
}
