using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.IO;

/// <summary>One tensor's place in a file about to be written: name, dtype and shape (the data comes later).</summary>
public sealed record TensorLayout(string Name, ScalarType DType, long[] Shape)
{
    public long ByteCount => Shape.Aggregate(1L, (a, b) => a * b) * DTypeSize(DType);
    private static long DTypeSize(ScalarType t) => t switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1,
    };
}

/// <summary>
/// Writes a safetensors file one tensor at a time (header first, from the layout), so converting or merging a
/// multi-GB checkpoint holds one tensor in memory, not all of them. Atomic like <see cref="Safetensors.Save(string, IEnumerable{KeyValuePair{string, Tensor}}, IReadOnlyDictionary{string, string}?)"/>.
/// </summary>
public static class SafetensorsStreamWriter
{
    /// <param name="produce">Called once per tensor, in layout order; must return a tensor of exactly that dtype and shape. Disposed after writing.</param>
    public static void Write(string path, IReadOnlyList<TensorLayout> layout, Func<TensorLayout, Tensor> produce, IReadOnlyDictionary<string, string>? metadata = null, CancellationToken cancellation = default)
    {
        using var header = new MemoryStream();
        using (var w = new Utf8JsonWriter(header))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in layout)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", Safetensors.ToCode(t.DType));
                w.WriteStartArray("shape");
                foreach (var d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + t.ByteCount);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += t.ByteCount;
            }
            w.WriteEndObject();
        }
        int pad = (int)((8 - header.Length % 8) % 8);
        for (int i = 0; i < pad; i++) header.WriteByte((byte)' ');

        AtomicFile.Write(path, s =>
        {
            s.Write(BitConverter.GetBytes(header.Length));
            header.Position = 0;
            header.CopyTo(s);
            foreach (var t in layout)
            {
                cancellation.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                var tensor = produce(t);
                if (tensor.dtype != t.DType || !tensor.shape.SequenceEqual(t.Shape))
                    throw new InvalidOperationException($"tensor '{t.Name}' produced as {tensor.dtype} [{string.Join(",", tensor.shape)}], layout says {t.DType} [{string.Join(",", t.Shape)}]");
                var c = tensor.cpu().contiguous();
                s.Write(c.bytes);
            }
        });
    }
}
