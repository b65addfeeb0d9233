using System.IO.Compression;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.IO.Pickle;

/// <summary>
/// A PyTorch checkpoint (<c>.ckpt</c>, <c>.pt</c>, <c>.pth</c>, <c>.bin</c>) in the zip format <c>torch.save</c> has
/// written since PyTorch 1.6: <c>PREFIX/data.pkl</c> describes the objects, <c>PREFIX/data/KEY</c> holds each
/// storage's raw little-endian bytes. The pickle is read with <see cref="RestrictedUnpickler"/>; tensors are
/// read from the zip only when loaded. A top-level <c>{"state_dict": {...}}</c> (Lightning) is unwrapped.
/// </summary>
public sealed class TorchCheckpoint : ITensorSource, IDisposable
{
    private readonly FileStream _stream;
    private readonly ZipArchive _zip;
    private readonly string _prefix;
    private readonly Dictionary<string, TensorRef> _tensors;
    private readonly object _lock = new();

    public string Path { get; }
    string ITensorSource.Description => Path;
    /// <summary>The unpickled top-level object (a <see cref="PickleDict"/> for every real checkpoint).</summary>
    public object? Root { get; }
    /// <summary>Tensor names in file order.</summary>
    public IReadOnlyList<string> Names { get; }

    private TorchCheckpoint(string path, FileStream stream, ZipArchive zip, string prefix, object? root, List<(string, TensorRef)> tensors)
    {
        Path = path; _stream = stream; _zip = zip; _prefix = prefix; Root = root;
        _tensors = new Dictionary<string, TensorRef>();
        foreach (var (n, t) in tensors) _tensors[n] = t;
        Names = tensors.Select(t => t.Item1).Distinct().ToList();
    }

    public IEnumerable<string> Keys => Names;
    public bool Contains(string name) => _tensors.ContainsKey(name);
    public long[] ShapeOf(string name) => Ref(name).Shape;
    public TensorRef Ref(string name) => _tensors.TryGetValue(name, out var t) ? t : throw new SdLoraException($"{Path}: has no tensor '{name}'");
    public ScalarType DTypeOf(string name) => Safetensors.ToScalarType(RestrictedUnpickler.StorageTypes[Ref(name).Storage.StorageType]);

    public static TorchCheckpoint Open(string path)
    {
        if (!File.Exists(path)) throw new SdLoraException($"{path}: file not found; check the path");
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            var head = new byte[4];
            int n = stream.Read(head);
            stream.Position = 0;
            if (n == 4 && head[0] == 0x80 && head[1] is >= 2 and <= 5 && head[2] == 0x8a && head[3] == 0x0a)
                throw new SdLoraException($"{path}: is in PyTorch's legacy (pre-1.6, non-zip) format, which sdlora does not read; re-save it with torch.save from PyTorch 1.6 or newer, or convert it to .safetensors");
            if (n < 4 || head[0] != (byte)'P' || head[1] != (byte)'K')
                throw new SdLoraException($"{path}: is not a PyTorch zip checkpoint (it does not start with a zip header); the file is damaged or of another kind; re-download it or use a .safetensors version");
            ZipArchive zip;
            try { zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true); }
            catch (InvalidDataException e) { throw new SdLoraException($"{path}: is not a readable zip ({e.Message}); the file is damaged or incompletely downloaded; re-download it"); }
            var pkl = zip.Entries.FirstOrDefault(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) && e.FullName.Count(c => c == '/') == 1)
                ?? throw new SdLoraException($"{path}: is a zip without a data.pkl, so not a PyTorch checkpoint; use the model's .safetensors or .ckpt file");
            string prefix = pkl.FullName[..^"data.pkl".Length];
            var order = zip.GetEntry(prefix + "byteorder");
            if (order != null)
            {
                using var r = new StreamReader(order.Open());
                if (r.ReadToEnd().Trim() == "big") throw new SdLoraException($"{path}: stores big-endian tensors, which sdlora does not read; convert it to .safetensors on the machine that made it");
            }
            byte[] pickle;
            try
            {
                using var s = pkl.Open();
                using var ms = new MemoryStream();
                s.CopyTo(ms);
                pickle = ms.ToArray();
            }
            catch (InvalidDataException e) { throw new SdLoraException($"{path}: its data.pkl cannot be read ({e.Message}); the file is damaged; re-download it"); }
            var root = RestrictedUnpickler.Load(path, pickle);
            var tensors = new List<(string, TensorRef)>();
            var dict = StateDictOf(root) ?? throw new SdLoraException($"{path}: holds no state dict (a dict of tensors); it is not a model checkpoint");
            foreach (var (k, v) in dict.Items)
                if (k is string name && v is TensorRef t) tensors.Add((name, t));
            return new TorchCheckpoint(path, stream, zip, prefix, root, tensors);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>The dict of tensors: <c>root["state_dict"]</c> when present (Lightning), else the root itself.</summary>
    private static PickleDict? StateDictOf(object? root)
    {
        if (root is not PickleDict d) return null;
        if (d.TryGet("state_dict", out var sd) && sd is PickleDict inner) return inner;
        return d;
    }

    Tensor ITensorSource.Load(string name, ScalarType? dtype) => Load(name, dtype);

    /// <summary>Reads one tensor (its storage bytes only as far as the view needs), converted to <paramref name="dtype"/> if given.</summary>
    public Tensor Load(string name, ScalarType? dtype = null) => Load(Ref(name), name, dtype);

    /// <summary>Reads a tensor found anywhere in <see cref="Root"/> (not only the top-level state dict); <paramref name="name"/> names it in errors.</summary>
    public Tensor Load(TensorRef r, string name, ScalarType? dtype = null)
    {
        var type = Safetensors.ToScalarType(RestrictedUnpickler.StorageTypes[r.Storage.StorageType]);
        int elem = (int)torch.empty(0, type).ElementSize;
        long count = r.Shape.Aggregate(1L, (a, b) => a * b);
        // The elements the view touches: [offset, offset + span) of the storage.
        long span = count == 0 ? 0 : 1 + r.Shape.Zip(r.Stride, (s, st) => (s - 1) * st).Sum();
        if (r.StorageOffset < 0 || r.Stride.Any(s => s < 0) || r.Shape.Length != r.Stride.Length || r.StorageOffset + span > r.Storage.ElementCount)
            throw new SdLoraException($"{Path}: tensor '{name}' describes a view outside its storage; the file is damaged; re-download it");
        var flat = torch.empty(span, type);
        if (span > 0) ReadStorage(name, r.Storage, r.StorageOffset * elem, flat);
        Tensor t;
        bool contiguous = span == count && IsContiguous(r.Shape, r.Stride);
        if (contiguous) t = flat.reshape(r.Shape);
        else { using var view = flat.as_strided(r.Shape, r.Stride, 0); t = view.contiguous(); }
        if (!ReferenceEquals(t, flat)) flat.Dispose();
        if (dtype is { } d && d != t.dtype) { var c = t.to(d); t.Dispose(); t = c; }
        return t;
    }

    private static bool IsContiguous(long[] shape, long[] stride)
    {
        long expected = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            if (shape[i] != 1 && stride[i] != expected) return false;
            expected *= shape[i];
        }
        return true;
    }

    private void ReadStorage(string tensorName, StorageRef storage, long byteOffset, Tensor into)
    {
        var span = into.bytes;
        lock (_lock)
        {
            var entry = _zip.GetEntry(_prefix + "data/" + storage.Key)
                ?? throw new SdLoraException($"{Path}: tensor '{tensorName}' needs storage '{storage.Key}' ({_prefix}data/{storage.Key}), which the zip lacks; the file is damaged; re-download it");
            try
            {
                using var s = entry.Open();
                if (s.CanSeek) s.Seek(byteOffset, SeekOrigin.Begin);
                else Skip(s, byteOffset);
                s.ReadExactly(span);
            }
            catch (Exception e) when (e is EndOfStreamException or InvalidDataException)
            {
                throw new SdLoraException($"{Path}: storage '{storage.Key}' of tensor '{tensorName}' is shorter than the tensor needs; the file is damaged; re-download it");
            }
        }
    }

    private static void Skip(Stream s, long n)
    {
        var buf = new byte[Math.Min(n, 1 << 20)];
        while (n > 0)
        {
            int got = s.Read(buf, 0, (int)Math.Min(n, buf.Length));
            if (got == 0) throw new EndOfStreamException();
            n -= got;
        }
    }

    public void Dispose()
    {
        _zip.Dispose();
        _stream.Dispose();
    }
}
