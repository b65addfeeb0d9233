using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.IO;

/// <summary>One tensor's entry in a safetensors header: its dtype code (<c>F16</c>, <c>BF16</c>, ...), shape and byte range.</summary>
public sealed record SafetensorsEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    public ScalarType ScalarType => Safetensors.ToScalarType(DType);
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A safetensors file opened for lazy reading: the header is parsed and validated up front, each tensor is
/// read only when asked for, through a short-lived memory-mapped view of its own bytes (so pages are
/// released again and peak memory stays at the tensors actually kept).
/// </summary>
public sealed class SafetensorsFile : ITensorSource, IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly long _dataStart;
    private readonly Dictionary<string, SafetensorsEntry> _entries;

    public string Path { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>Entries in file order.</summary>
    public IReadOnlyList<SafetensorsEntry> Entries { get; }

    private SafetensorsFile(string path, MemoryMappedFile? map, long dataStart, List<SafetensorsEntry> entries, Dictionary<string, string> metadata)
    {
        Path = path;
        _map = map;
        _dataStart = dataStart;
        Entries = entries;
        _entries = entries.ToDictionary(e => e.Name);
        Metadata = metadata;
    }

    public bool Contains(string name) => _entries.ContainsKey(name);
    string ITensorSource.Description => Path;
    public long[] ShapeOf(string name) => this[name].Shape;
    Tensor ITensorSource.Load(string name, ScalarType? dtype) => Load(name, dtype);
    public IEnumerable<string> Keys => Entries.Select(e => e.Name);
    public SafetensorsEntry this[string name] => _entries.TryGetValue(name, out var e) ? e
        : throw new SdLoraException($"{Path}: has no tensor '{name}'");

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new SdLoraException($"{path}: file not found; check the path");
        string Bad(string problem) => $"{path}: not a valid safetensors file ({problem}); re-download or re-export it";

        byte[] headerBytes;
        long headerLength, length;
        using (var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            // The opened file's length, not FileInfo's: that one is the link's own size when the path is a symbolic link
            // (Hugging Face caches link every model file).
            length = fs.Length;
            if (length < 8) throw new SdLoraException(Bad($"only {length} bytes, shorter than the 8-byte header length"));
            Span<byte> lenBytes = stackalloc byte[8];
            fs.ReadExactly(lenBytes);
            headerLength = BitConverter.ToInt64(lenBytes);
            if (headerLength <= 0 || headerLength > length - 8)
                throw new SdLoraException(Bad($"header length {headerLength} runs past the end of the {length}-byte file"));
            if (headerLength > 100_000_000) throw new SdLoraException(Bad($"header length {headerLength} is implausibly large"));
            headerBytes = new byte[headerLength];
            fs.ReadExactly(headerBytes);
        }

        var metadata = new Dictionary<string, string>();
        var entries = new List<SafetensorsEntry>();
        long dataLength = length - 8 - headerLength;
        try
        {
            using var doc = JsonDocument.Parse(headerBytes);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new SdLoraException(Bad("header is not a JSON object"));
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw new SdLoraException(Bad("__metadata__ is not an object"));
                    foreach (var m in prop.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                var v = prop.Value;
                if (v.ValueKind != JsonValueKind.Object || !v.TryGetProperty("dtype", out var dt) || !v.TryGetProperty("shape", out var sh) || !v.TryGetProperty("data_offsets", out var off)
                    || dt.ValueKind != JsonValueKind.String || sh.ValueKind != JsonValueKind.Array || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
                    throw new SdLoraException(Bad($"tensor '{prop.Name}' lacks dtype, shape or data_offsets"));
                string dtype = dt.GetString()!;
                if (!TryElementSize(dtype, out int elemSize)) throw new SdLoraException(Bad($"tensor '{prop.Name}' has unknown dtype '{dtype}'"));
                var shape = sh.EnumerateArray().Select(x => x.TryGetInt64(out var n) && n >= 0 ? n : throw new SdLoraException(Bad($"tensor '{prop.Name}' has an invalid shape"))).ToArray();
                if (!off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin || end > dataLength)
                    throw new SdLoraException(Bad($"tensor '{prop.Name}' data_offsets {off.GetRawText()} lie outside the {dataLength}-byte data section"));
                var entry = new SafetensorsEntry(prop.Name, dtype, shape, begin, end);
                if (entry.ElementCount * elemSize != end - begin)
                    throw new SdLoraException(Bad($"tensor '{prop.Name}' has {end - begin} bytes but shape [{string.Join(",", shape)}] x {dtype} needs {entry.ElementCount * elemSize}"));
                entries.Add(entry);
            }
        }
        catch (JsonException e)
        {
            throw new SdLoraException(Bad($"header is not valid JSON: {e.Message.Split('\n')[0]}"));
        }
        catch (InvalidOperationException e)
        {
            throw new SdLoraException(Bad($"header has a value of the wrong type: {e.Message.Split('\n')[0]}"));
        }
        var sorted = entries.Where(e => e.End > e.Begin).OrderBy(e => e.Begin).ToList();
        for (int i = 1; i < sorted.Count; i++)
            if (sorted[i].Begin < sorted[i - 1].End)
                throw new SdLoraException(Bad($"tensors '{sorted[i - 1].Name}' and '{sorted[i].Name}' overlap"));
        entries = entries.OrderBy(e => e.Begin).ToList();

        var map = dataLength > 0 ? MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read) : null;
        return new SafetensorsFile(path, map, 8 + headerLength, entries, metadata);
    }

    /// <summary>Reads one tensor, converted to <paramref name="dtype"/> (if given) and moved to <paramref name="device"/> (if given).</summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        var e = this[name];
        var t = torch.empty(e.Shape, e.ScalarType);
        if (e.End > e.Begin) CopyInto(e, t);
        if (dtype is { } d && d != t.dtype) { var c = t.to(d); t.Dispose(); t = c; }
        if (device is { } dev && dev.type != DeviceType.CPU) { var c = t.to(dev); t.Dispose(); t = c; }
        return t;
    }

    /// <summary>
    /// Copies tensor <paramref name="name"/> into <paramref name="target"/>: a contiguous CPU target of the file's dtype, or
    /// of another float format (<see cref="FloatFormats"/>), gets the bytes straight from the mapped file, converted on
    /// the way; any other goes through one staging tensor in the file's dtype and one converting <c>copy_</c>.
    /// Thread-safe for different targets.
    /// </summary>
    public bool SupportsParallelReads => true;

    public void CopyInto(string name, Tensor target)
    {
        var e = this[name];
        if (e.ElementCount != target.NumberOfElements)
            throw new SdLoraException($"{Path}: tensor '{name}' has {e.ElementCount} elements, the target {target.NumberOfElements}");
        if (e.End == e.Begin) return;
        if (target.device_type == DeviceType.CPU && target.is_contiguous() && target.NumberOfElements * target.ElementSize <= int.MaxValue
            && (e.ScalarType == target.dtype || FloatFormats.CanConvert(e.ScalarType, target.dtype)))
        {
            CopyInto(e, target);
            return;
        }
        using var staging = torch.empty(target.shape, e.ScalarType);
        CopyInto(e, staging);
        target.copy_(staging);
    }

    private unsafe void CopyInto(SafetensorsEntry e, Tensor t)
    {
        long size = e.End - e.Begin;
        using var view = _map!.CreateViewAccessor(_dataStart + e.Begin, size, MemoryMappedFileAccess.Read);
        byte* ptr = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
        try
        {
            ptr += view.PointerOffset;
            if (size > int.MaxValue) throw new SdLoraException($"{Path}: tensor '{e.Name}' is larger than 2 GiB, which sdlora cannot read");
            var bytes = new ReadOnlySpan<byte>(ptr, (int)size);
            if (e.ScalarType == t.dtype) bytes.CopyTo(t.bytes);
            else FloatFormats.Convert(bytes, e.ScalarType, t.bytes, t.dtype);
        }
        finally { view.SafeMemoryMappedViewHandle.ReleasePointer(); }
    }

    /// <summary>Reads every tensor (small files: LoRAs, fixtures).</summary>
    public Dictionary<string, Tensor> LoadAll(ScalarType? dtype = null, Device? device = null) =>
        Entries.ToDictionary(e => e.Name, e => Load(e.Name, dtype, device));

    public void Dispose() => _map?.Dispose();

    internal static bool TryElementSize(string dtype, out int size)
    {
        size = dtype switch
        {
            "F64" or "I64" or "U64" => 8,
            "F32" or "I32" or "U32" => 4,
            "F16" or "BF16" or "I16" or "U16" => 2,
            "I8" or "U8" or "BOOL" => 1,
            _ => 0,
        };
        return size > 0;
    }

}

/// <summary>Reads and writes the safetensors format (https://github.com/huggingface/safetensors).</summary>
public static class Safetensors
{
    public static SafetensorsFile Open(string path) => SafetensorsFile.Open(path);

    public static ScalarType ToScalarType(string code) => code switch
    {
        "F64" => ScalarType.Float64,
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => throw new SdLoraException($"safetensors dtype '{code}' is not supported by sdlora"),
    };

    public static string ToCode(ScalarType t) => t switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new SdLoraException($"tensors of type {t} cannot be stored in safetensors"),
    };

    /// <summary>
    /// Writes tensors (in the given order) and optional string metadata atomically: a temp file beside
    /// <paramref name="path"/> is written, flushed and renamed over it.
    /// </summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var seen = new HashSet<string>();
        foreach (var (name, _) in list)
            if (!seen.Add(name) || name == "__metadata__") throw new ArgumentException($"duplicate or reserved tensor name '{name}'");

        var byName = list.ToDictionary(kv => kv.Key, kv => kv.Value);
        var layout = list.Select(kv => new TensorLayout(kv.Key, kv.Value.dtype, kv.Value.shape)).ToList();
        // A fresh alias per tensor: the writer disposes what it is handed, the caller keeps its own tensor.
        SafetensorsStreamWriter.Write(path, layout, t => byName[t.Name].alias(), metadata);
    }

    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null) =>
        Save(path, tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).AsEnumerable(), metadata);

    /// <summary>Reads only the metadata of a file (no tensors).</summary>
    public static IReadOnlyDictionary<string, string> ReadMetadata(string path)
    {
        using var f = SafetensorsFile.Open(path);
        return f.Metadata;
    }
}
