using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// Fills a module's parameters and buffers from a tensor source whose names equal the module's
/// registered names (modules are built with the reference names, so loading is a lookup, not a translation).
/// Tensors are read and copied one at a time, so peak memory is the model plus one tensor.
/// </summary>
public static class ModuleWeights
{
    /// <param name="ignoreMissing">Names (exact) that may be absent from the source, e.g. buffers the reference does not store.</param>
    /// <param name="ct">Checked before each tensor: a cancelled load stops within one tensor copy per thread.</param>
    /// <remarks>
    /// Every name and shape is checked before anything is copied. Tensors are then copied straight into the module's
    /// own tensors (<see cref="ITensorSource.CopyInto"/>, converting to their dtype on the way), several at a time:
    /// with a memory-mapped file most of a load is page faults and conversions, which use every core.
    /// </remarks>
    public static void Load(nn.Module module, ITensorSource source, Func<string, bool>? ignoreMissing = null, CancellationToken ct = default)
    {
        var missing = new List<string>();
        var work = new List<(string Name, Tensor Target)>();
        foreach (var (name, target) in module.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).Concat(module.named_buffers()))
        {
            ct.ThrowIfCancellationRequested();
            if (!source.Contains(name))
            {
                if (ignoreMissing?.Invoke(name) != true) missing.Add(name);
                continue;
            }
            var shape = source.ShapeOf(name);
            if (!shape.SequenceEqual(target.shape))
                throw new SdLoraException($"{source.Description}: tensor '{name}' has shape [{string.Join(",", shape)}] but the model expects [{string.Join(",", target.shape)}]; the checkpoint does not match this model's configuration (wrong --config?)");
            work.Add((name, target));
        }
        if (missing.Count > 0)
            throw new SdLoraException($"{source.Description}: {missing.Count} weights the model needs are missing (first: {string.Join(", ", missing.Take(3))}); the file is incomplete or not this kind of model");
        // Largest first, so the threads finish together. Grad mode is per thread: each worker turns it off itself.
        var ordered = work.OrderByDescending(w => w.Target.NumberOfElements).ToList();
        int threads = source.SupportsParallelReads ? Math.Max(1, Environment.ProcessorCount) : 1;
        Parallel.ForEach(ordered, new ParallelOptions { MaxDegreeOfParallelism = threads, CancellationToken = ct }, w =>
        {
            ct.ThrowIfCancellationRequested();
            using var noGrad = torch.no_grad();
            source.CopyInto(w.Name, w.Target);
        });
    }

    /// <summary>All parameters and buffers as a name -> tensor map (views, not copies).</summary>
    public static Dictionary<string, Tensor> StateDict(nn.Module module) =>
        module.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).Concat(module.named_buffers()).ToDictionary(p => p.Item1, p => p.Item2);

    /// <summary>Total number of parameter elements.</summary>
    public static long ParameterCount(nn.Module module) => module.parameters().Sum(p => p.NumberOfElements);
}
