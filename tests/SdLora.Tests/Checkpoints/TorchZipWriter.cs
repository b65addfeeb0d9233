using System.IO.Compression;
using System.Text;

namespace SdLora.Tests.Checkpoints;

/// <summary>Emits pickle opcodes the way torch.save (protocol 2) does; just enough to build test checkpoints without Python.</summary>
public sealed class PickleWriter
{
    private readonly MemoryStream _s = new();
    private int _memo;

    public PickleWriter() { Op(0x80); _s.WriteByte(2); }
    public PickleWriter Op(byte op) { _s.WriteByte(op); return this; }
    public PickleWriter Raw(params byte[] bytes) { _s.Write(bytes); return this; }
    public PickleWriter Mark() => Op((byte)'(');
    public PickleWriter EmptyDict() => Op((byte)'}');
    public PickleWriter EmptyTuple() => Op((byte)')');
    public PickleWriter Tuple() => Op((byte)'t');
    public PickleWriter SetItems() => Op((byte)'u');
    public PickleWriter SetItem() => Op((byte)'s');
    public PickleWriter Reduce() => Op((byte)'R');
    public PickleWriter False() => Op(0x89);
    public PickleWriter None() => Op((byte)'N');
    public PickleWriter Stop() => Op((byte)'.');
    public PickleWriter PersId() => Op((byte)'Q');
    public PickleWriter Put() { Op((byte)'q'); _s.WriteByte((byte)(_memo++ & 0xff)); return this; }

    public PickleWriter Str(string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        Op((byte)'X'); _s.Write(BitConverter.GetBytes(b.Length)); _s.Write(b);
        return Put();
    }

    public PickleWriter Int(long v)
    {
        if (v >= 0 && v < 256) { Op((byte)'K'); _s.WriteByte((byte)v); }
        else if (v >= int.MinValue && v <= int.MaxValue) { Op((byte)'J'); _s.Write(BitConverter.GetBytes((int)v)); }
        else { Op(0x8a); _s.WriteByte(8); _s.Write(BitConverter.GetBytes(v)); }
        return this;
    }

    public PickleWriter Global(string module, string name)
    {
        Op((byte)'c'); _s.Write(Encoding.ASCII.GetBytes(module + "\n" + name + "\n"));
        return Put();
    }

    public PickleWriter IntTuple(long[] values)
    {
        Mark();
        foreach (var v in values) Int(v);
        return Tuple();
    }

    /// <summary>A tensor as torch.save writes it: <c>_rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())</c>.</summary>
    public PickleWriter Tensor(string storageType, string key, long numel, long offset, long[] shape, long[] stride)
    {
        Global("torch._utils", "_rebuild_tensor_v2");
        Mark();
        Mark().Str("storage").Global("torch", storageType).Str(key).Str("cpu").Int(numel).Tuple().PersId();
        Int(offset).IntTuple(shape).IntTuple(stride).False();
        Global("collections", "OrderedDict").EmptyTuple().Reduce();
        return Tuple().Reduce();
    }

    public byte[] ToArray() => _s.ToArray();
}

/// <summary>Writes the zip layout of torch.save: PREFIX/data.pkl, PREFIX/data/KEY, PREFIX/version.</summary>
public static class TorchZipWriter
{
    public static void Write(string path, byte[] pickle, IReadOnlyDictionary<string, byte[]> storages, string prefix = "archive")
    {
        using var fs = File.Create(path);
        using var zip = new ZipArchive(fs, ZipArchiveMode.Create);
        void Add(string name, byte[] data)
        {
            var e = zip.CreateEntry(prefix + "/" + name, CompressionLevel.NoCompression);
            using var s = e.Open();
            s.Write(data);
        }
        Add("data.pkl", pickle);
        Add("byteorder", Encoding.ASCII.GetBytes("little"));
        foreach (var (k, v) in storages) Add("data/" + k, v);
        Add("version", Encoding.ASCII.GetBytes("3\n"));
    }

    /// <summary>A state dict of contiguous tensors (one storage each), optionally wrapped as <c>{"state_dict": ..., "global_step": N}</c>.</summary>
    public static void WriteStateDict(string path, IEnumerable<(string Name, TorchSharp.torch.Tensor Tensor)> tensors, bool wrap)
    {
        var w = new PickleWriter();
        if (wrap) w.EmptyDict().Put().Mark().Str("global_step").Int(470000).Str("state_dict");
        w.EmptyDict().Put().Mark();
        var storages = new Dictionary<string, byte[]>();
        foreach (var (name, t) in tensors)
        {
            string key = storages.Count.ToString();
            using var c = t.contiguous();
            storages[key] = c.bytes.ToArray();
            var shape = t.shape;
            var stride = new long[shape.Length];
            long acc = 1;
            for (int i = shape.Length - 1; i >= 0; i--) { stride[i] = acc; acc *= shape[i]; }
            string type = t.dtype switch
            {
                TorchSharp.torch.ScalarType.Float16 => "HalfStorage",
                TorchSharp.torch.ScalarType.Float32 => "FloatStorage",
                TorchSharp.torch.ScalarType.BFloat16 => "BFloat16Storage",
                TorchSharp.torch.ScalarType.Int64 => "LongStorage",
                _ => throw new ArgumentException(t.dtype.ToString()),
            };
            w.Str(name).Tensor(type, key, t.NumberOfElements, 0, shape, stride);
        }
        w.SetItems();
        if (wrap) w.SetItems();
        Write(path, w.Stop().ToArray(), storages);
    }
}
