using SdLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Pipelines;

/// <summary>What identifies a loaded model: the checkpoint's full path, the device and the dtype.</summary>
public sealed record HostedModelKey(string Path, string Device, ScalarType DType)
{
    public static HostedModelKey For(string path, ComputeOptions compute) =>
        new(System.IO.Path.GetFullPath(path), compute.Device.ToString(), compute.DType);

    public override string ToString() => $"{Path} ({ComputeOptions.DTypeName(DType)} on {Device})";
}

/// <summary>A model the host holds: its key, whether a job has it now, and how often it was lent.</summary>
public sealed record HostedModelInfo(HostedModelKey Key, bool InUse, int Loans);

/// <summary>
/// Keeps Stable Diffusion models loaded between jobs and lends each to one job at a time (the way ML.NET's
/// PredictionEnginePool lends non-thread-safe models to requests): a checkpoint is loaded once per (path, device,
/// dtype), and a second borrower of the same model waits until the first returns it. Returning a model makes it
/// clean again: every adapter a job attached (LoRAs) is detached, and the modules are back in frozen eval mode, so
/// nothing a job did leaks into the next one. At most <see cref="Capacity"/> models stay loaded; loading another
/// unloads the least recently used idle one.
/// </summary>
public sealed class ModelHost : IDisposable
{
    public delegate StableDiffusionModel Loader(string path, ComputeOptions compute, IProgress<string>? progress, CancellationToken ct);

    private sealed class Entry(HostedModelKey key)
    {
        public HostedModelKey Key { get; } = key;
        public SemaphoreSlim Gate { get; } = new(1, 1);
        public StableDiffusionModel? Model { get; set; }
        public long LastUsed { get; set; }
        public int Loans { get; set; }
    }

    private readonly object _sync = new();
    private readonly Dictionary<HostedModelKey, Entry> _entries = new();
    private readonly Loader _load;
    private long _clock;
    private bool _disposed;

    public int Capacity { get; }
    /// <summary>How many times a checkpoint was read from disk (a model lent again is not counted).</summary>
    public int LoadCount { get; private set; }

    /// <param name="capacity">Models kept loaded at once (each SD1.5 model is about 4 GiB in fp32).</param>
    /// <param name="loader">How to load a checkpoint; default <see cref="StableDiffusionModel.Load"/> (tests count loads with their own).</param>
    public ModelHost(int capacity = 1, Loader? loader = null)
    {
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity), "keep at least one model");
        Capacity = capacity;
        _load = loader ?? ((path, compute, progress, ct) => StableDiffusionModel.Load(path, null, compute, progress, ct));
    }

    /// <summary>
    /// Lends the model of <paramref name="path"/> on <paramref name="compute"/>'s device and dtype, loading it on first
    /// use. Waits while another job has it; <paramref name="ct"/> stops the wait or the load
    /// (<see cref="OperationCanceledException"/>). Dispose the lease to give the model back.
    /// </summary>
    public ModelLease Borrow(string path, ComputeOptions compute, CancellationToken ct = default, IProgress<string>? progress = null)
    {
        var key = HostedModelKey.For(path, compute);
        Entry entry;
        lock (_sync)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_entries.TryGetValue(key, out entry!)) _entries[key] = entry = new Entry(key);
        }
        entry.Gate.Wait(ct);
        try
        {
            if (entry.Model is null)
            {
                UnloadIdle(keepRoomFor: entry);
                entry.Model = _load(path, compute, progress, ct);
                lock (_sync) LoadCount++;
            }
            lock (_sync)
            {
                entry.LastUsed = ++_clock;
                entry.Loans++;
            }
            return new ModelLease(this, entry.Model, () => Return(entry));
        }
        catch
        {
            entry.Gate.Release();
            throw;
        }
    }

    /// <summary>The models loaded now.</summary>
    public IReadOnlyList<HostedModelInfo> Loaded
    {
        get
        {
            lock (_sync)
                return _entries.Values.Where(e => e.Model is not null).OrderBy(e => e.LastUsed)
                    .Select(e => new HostedModelInfo(e.Key, e.Gate.CurrentCount == 0, e.Loans)).ToList();
        }
    }

    /// <summary>Unloads every model no job holds (e.g. before a training run that loads its own copy).</summary>
    public void UnloadIdle() => UnloadIdle(keepRoomFor: null);

    private void UnloadIdle(Entry? keepRoomFor)
    {
        List<Entry> candidates;
        lock (_sync)
            candidates = _entries.Values.Where(e => e != keepRoomFor && e.Model is not null).OrderBy(e => e.LastUsed).ToList();
        int loaded = candidates.Count;
        foreach (var e in candidates)
        {
            if (keepRoomFor is not null && loaded < Capacity) break;
            if (!e.Gate.Wait(0)) continue; // lent out: stays
            try
            {
                e.Model?.Dispose();
                e.Model = null;
                loaded--;
            }
            finally { e.Gate.Release(); }
        }
    }

    private void Return(Entry entry)
    {
        try
        {
            if (entry.Model is { } model) MakeClean(model);
        }
        catch
        {
            // A model that cannot be put back in order is not lent again.
            entry.Model?.Dispose();
            entry.Model = null;
            throw;
        }
        finally { entry.Gate.Release(); }
    }

    /// <summary>
    /// Detaches every adapter from the model's layers and puts its modules back in frozen eval mode (no gradients, no
    /// gradient checkpointing). Returns how many adapters were still attached.
    /// </summary>
    public static int MakeClean(StableDiffusionModel model)
    {
        int detached = 0;
        foreach (var root in new nn.Module[] { model.TextEncoder, model.UNet, model.Vae })
        {
            foreach (var (_, m) in root.named_modules())
            {
                switch (m)
                {
                    case AdaptableLinear l: detached += l.ClearAdapters(); break;
                    case AdaptableConv2d c: detached += c.ClearAdapters(); break;
                }
            }
            root.eval();
            foreach (var p in root.parameters()) p.requires_grad = false;
        }
        model.UNet.GradientCheckpointing = false;
        return detached;
    }

    public void Dispose()
    {
        List<Entry> all;
        lock (_sync)
        {
            if (_disposed) return;
            _disposed = true;
            all = _entries.Values.ToList();
            _entries.Clear();
        }
        foreach (var e in all)
        {
            e.Model?.Dispose();
            e.Model = null;
        }
    }
}

/// <summary>A model lent by <see cref="ModelHost"/> to one job. Dispose to give it back (adapters are then detached).</summary>
public sealed class ModelLease : IDisposable
{
    private readonly Action _return;
    private int _returned;

    internal ModelLease(ModelHost host, StableDiffusionModel model, Action giveBack)
    {
        Host = host;
        Model = model;
        _return = giveBack;
    }

    public ModelHost Host { get; }
    public StableDiffusionModel Model { get; }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _returned, 1) == 0) _return();
    }
}
