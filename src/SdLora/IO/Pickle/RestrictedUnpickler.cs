// Why we keep this: .ckpt files are pickles, and a deliberately restricted reader that refuses every global but a state dict's is the point (docs/libraries.md).
using System.Buffers.Binary;
using System.Numerics;
using System.Text;

namespace SdLora.IO.Pickle;

/// <summary>A Python global the pickle named (<c>module.name</c>), kept as data: nothing is ever imported or run.</summary>
public sealed record PickleGlobal(string Module, string Name)
{
    public string FullName => Module + "." + Name;
    public override string ToString() => FullName;
}

/// <summary>An object of a harmless class we do not model (numpy scalars, Lightning callbacks): kept only as an inert placeholder.</summary>
public sealed class PickleObject(PickleGlobal type, object?[] args)
{
    public PickleGlobal Type { get; } = type;
    public object?[] Args { get; } = args;
    public object? State { get; set; }
    public override string ToString() => $"<{Type.FullName}>";
}

/// <summary>A Python tuple.</summary>
public sealed class PickleTuple(object?[] items)
{
    public object?[] Items { get; } = items;
    public int Count => Items.Length;
    public object? this[int i] => Items[i];
}

/// <summary>A Python dict (or OrderedDict); keeps insertion order.</summary>
public sealed class PickleDict
{
    private readonly Dictionary<object, object?> _map = new();
    private readonly List<object> _order = [];
    private static readonly object NoneKey = new();

    public void Set(object? key, object? value)
    {
        var k = key ?? NoneKey;
        if (!_map.ContainsKey(k)) _order.Add(k);
        _map[k] = value;
    }

    public bool TryGet(string key, out object? value) => _map.TryGetValue(key, out value);
    public int Count => _order.Count;
    public IEnumerable<KeyValuePair<object?, object?>> Items =>
        _order.Select(k => new KeyValuePair<object?, object?>(ReferenceEquals(k, NoneKey) ? null : k, _map[k]));
}

/// <summary>A reference to one tensor storage in the checkpoint's zip (<c>archive/data/KEY</c>).</summary>
public sealed record StorageRef(string Key, string StorageType, long ElementCount);

/// <summary>A tensor described by the pickle: a strided view into a storage. Its bytes are read only when loaded.</summary>
public sealed record TensorRef(StorageRef Storage, long StorageOffset, long[] Shape, long[] Stride);

/// <summary>
/// Reads the pickle that <c>torch.save</c> writes (protocols 2 to 5), without running any Python: every object
/// is rebuilt as plain data, and the pickle may name only the globals a state dict needs (tensor rebuild
/// functions, storage types, OrderedDict) plus a few known-harmless classes that training frameworks store
/// beside the weights (kept as inert placeholders). Any other global means the file was made to do something
/// other than hold weights, so it is refused.
/// </summary>
public sealed class RestrictedUnpickler
{
    /// <summary>Storage types, by the name <c>torch</c> gives them, with the dtype of their elements.</summary>
    public static readonly IReadOnlyDictionary<string, string> StorageTypes = new Dictionary<string, string>
    {
        ["FloatStorage"] = "F32", ["HalfStorage"] = "F16", ["BFloat16Storage"] = "BF16", ["DoubleStorage"] = "F64",
        ["LongStorage"] = "I64", ["IntStorage"] = "I32", ["ShortStorage"] = "I16", ["CharStorage"] = "I8",
        ["ByteStorage"] = "U8", ["BoolStorage"] = "BOOL", ["UntypedStorage"] = "U8",
    };

    // Globals that rebuild tensors and containers: interpreted below.
    private static readonly HashSet<string> Rebuilders =
    [
        "collections.OrderedDict", "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2", "torch.nn.parameter.Parameter",
        "_codecs.encode", "builtins.set", "__builtin__.set", "builtins.frozenset", "__builtin__.frozenset",
    ];

    // Data-only classes that real checkpoints (PyTorch Lightning, numpy metrics) put next to the state dict.
    // They are never constructed: they become PickleObject placeholders that no weight reader looks at.
    private static readonly HashSet<string> InertClasses =
    [
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "pytorch_lightning.callbacks.model_checkpoint",
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
        "torch.nn.modules.container.ParameterDict", "torch.Size", "torch.device", "torch.float32", "torch.float16",
        "torch.bfloat16", "argparse.Namespace",
    ];

    private readonly string _file;
    private readonly byte[] _data;
    private int _pos;
    private readonly List<object?> _stack = [];
    private readonly Stack<List<object?>> _marks = new();
    private readonly Dictionary<long, object?> _memo = new();

    private RestrictedUnpickler(string file, byte[] data) { _file = file; _data = data; }

    /// <summary>Unpickles <paramref name="data"/>; <paramref name="file"/> names it in error messages.</summary>
    public static object? Load(string file, byte[] data) => new RestrictedUnpickler(file, data).Run();

    private SdLoraException Damaged(string problem) =>
        new($"{_file}: cannot read its pickle ({problem}); the file is damaged or not a PyTorch checkpoint; re-download it or use a .safetensors version");

    private SdLoraException Truncated() =>
        new($"{_file}: its pickle ends early at byte {_data.Length} (truncated); the file is damaged or incompletely downloaded; re-download it");

    private object? Run()
    {
        while (true)
        {
            if (_pos >= _data.Length) throw Truncated();
            int at = _pos;
            byte op = _data[_pos++];
            switch (op)
            {
                case 0x80: ReadByte(); break;                              // PROTO
                case 0x95: ReadBytes(8); break;                            // FRAME (length only)
                case (byte)'.': return _stack.Count == 1 ? _stack[0] : throw Damaged($"STOP with {_stack.Count} values on the stack");
                case (byte)'}': Push(new PickleDict()); break;
                case (byte)']': Push(new List<object?>()); break;
                case (byte)')': Push(new PickleTuple([])); break;
                case 0x8f: Push(new List<object?>()); break;               // EMPTY_SET (kept as a list)
                case (byte)'(': _marks.Push([.. _stack]); _stack.Clear(); break;
                case (byte)'t': Push(new PickleTuple(PopMark().ToArray())); break;
                case 0x85: Push(new PickleTuple([Pop()])); break;
                case 0x86: { var b = Pop(); var a = Pop(); Push(new PickleTuple([a, b])); break; }
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new PickleTuple([a, b, c])); break; }
                case (byte)'l': Push(PopMark()); break;                    // LIST
                case (byte)'d': Push(DictOf(PopMark())); break;            // DICT
                case 0x91: Push(new PickleTuple(PopMark().ToArray())); break; // FROZENSET
                case (byte)'N': Push(null); break;
                case 0x88: Push(true); break;
                case 0x89: Push(false); break;
                case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(ReadBytes(4))); break;
                case (byte)'K': Push((long)ReadByte()); break;
                case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(ReadBytes(2))); break;
                case 0x8a: Push(ReadLong(ReadByte())); break;              // LONG1
                case 0x8b: Push(ReadLong(ReadLength(4))); break;           // LONG4
                case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(ReadBytes(8))); break;
                case (byte)'I': Push(ParseTextInt(ReadLine())); break;     // INT (protocol 0)
                case (byte)'L': Push(ParseTextInt(ReadLine().TrimEnd('L'))); break;
                case (byte)'X': Push(Encoding.UTF8.GetString(ReadBytes(ReadLength(4)))); break;
                case 0x8c: Push(Encoding.UTF8.GetString(ReadBytes(ReadByte()))); break;
                case 0x8d: Push(Encoding.UTF8.GetString(ReadBytes(ReadLength(8)))); break;
                case (byte)'U': Push(Encoding.Latin1.GetString(ReadBytes(ReadByte()))); break;
                case (byte)'T': Push(Encoding.Latin1.GetString(ReadBytes(ReadLength(4)))); break;
                case (byte)'C': Push(ReadBytes(ReadByte()).ToArray()); break;
                case (byte)'B': Push(ReadBytes(ReadLength(4)).ToArray()); break;
                case 0x8e: Push(ReadBytes(ReadLength(8)).ToArray()); break;
                case 0x96: Push(ReadBytes(ReadLength(8)).ToArray()); break; // BYTEARRAY8
                case (byte)'q': _memo[ReadByte()] = Peek(); break;
                case (byte)'r': _memo[ReadLength(4)] = Peek(); break;
                case 0x94: _memo[_memo.Count] = Peek(); break;             // MEMOIZE
                case (byte)'p': _memo[(long)ParseTextInt(ReadLine())] = Peek(); break;
                case (byte)'h': Push(Memo(ReadByte())); break;
                case (byte)'j': Push(Memo(ReadLength(4))); break;
                case (byte)'g': Push(Memo((long)ParseTextInt(ReadLine()))); break;
                case (byte)'0': Pop(); break;
                case (byte)'1': PopMark(); break;
                case (byte)'2': Push(Peek()); break;
                case (byte)'c': Push(Global(ReadLine(), ReadLine())); break;
                case 0x93: { var name = Pop(); var module = Pop(); Push(Global(module as string ?? throw Damaged("STACK_GLOBAL without a module name"), name as string ?? throw Damaged("STACK_GLOBAL without a name"))); break; }
                case (byte)'Q': Push(PersistentLoad(Pop())); break;
                case (byte)'R': { var args = Pop(); var f = Pop(); Push(Call(f, args)); break; }
                case 0x81: { var args = Pop(); var cls = Pop(); Push(Call(cls, args)); break; } // NEWOBJ
                case 0x92: { Pop(); var args = Pop(); var cls = Pop(); Push(Call(cls, args)); break; } // NEWOBJ_EX
                case (byte)'b': { var state = Pop(); Build(Peek(), state); break; }
                case (byte)'s': { var v = Pop(); var k = Pop(); SetItem(Peek(), k, v); break; }
                case (byte)'u': { var items = PopMark(); var d = Peek(); for (int i = 0; i + 1 < items.Count; i += 2) SetItem(d, items[i], items[i + 1]); break; }
                case (byte)'a': { var v = Pop(); AsList(Peek()).Add(v); break; }
                case (byte)'e': case 0x90: { var items = PopMark(); AsList(Peek()).AddRange(items); break; } // APPENDS, ADDITEMS
                default: throw Damaged($"unknown opcode 0x{op:x2} at byte {at}");
            }
        }
    }

    private void Push(object? o) => _stack.Add(o);
    private object? Peek() => _stack.Count > 0 ? _stack[^1] : throw Damaged("stack underflow");
    private object? Pop()
    {
        if (_stack.Count == 0) throw Damaged("stack underflow");
        var o = _stack[^1];
        _stack.RemoveAt(_stack.Count - 1);
        return o;
    }

    private List<object?> PopMark()
    {
        if (_marks.Count == 0) throw Damaged("MARK missing");
        var items = new List<object?>(_stack);
        _stack.Clear();
        _stack.AddRange(_marks.Pop());
        return items;
    }

    private object? Memo(long key) => _memo.TryGetValue(key, out var v) ? v : throw Damaged($"memo entry {key} used before it was stored");

    private byte ReadByte() => _pos < _data.Length ? _data[_pos++] : throw Truncated();

    private ReadOnlySpan<byte> ReadBytes(long n)
    {
        if (n < 0 || n > _data.Length - _pos) throw Truncated();
        var s = _data.AsSpan(_pos, (int)n);
        _pos += (int)n;
        return s;
    }

    private long ReadLength(int bytes)
    {
        var s = ReadBytes(bytes);
        long n = bytes == 4 ? BinaryPrimitives.ReadUInt32LittleEndian(s) : BinaryPrimitives.ReadInt64LittleEndian(s);
        return n;
    }

    private string ReadLine()
    {
        int end = Array.IndexOf(_data, (byte)'\n', _pos);
        if (end < 0) throw Truncated();
        var s = Encoding.ASCII.GetString(_data, _pos, end - _pos);
        _pos = end + 1;
        return s;
    }

    private object ParseTextInt(string s)
    {
        if (s == "00") return false;
        if (s == "01") return true;
        return long.TryParse(s, out var v) ? v : throw Damaged($"bad integer '{s}'");
    }

    private object ReadLong(long n)
    {
        var bytes = ReadBytes(n);
        var big = new BigInteger(bytes, isUnsigned: false, isBigEndian: false);
        // (object) on both arms: without it the conditional is a BigInteger, and a LONG1 size or offset is not read as a long.
        return big >= long.MinValue && big <= long.MaxValue ? (object)(long)big : big;
    }

    private PickleGlobal Global(string module, string name)
    {
        var g = new PickleGlobal(module, name);
        if (module == "torch" && StorageTypes.ContainsKey(name)) return g;
        if (Rebuilders.Contains(g.FullName) || InertClasses.Contains(g.FullName)) return g;
        throw new SdLoraException($"{_file}: refuses to load: the pickle asks for '{g.FullName}', which a model checkpoint never needs; this file may be malicious — convert it to .safetensors with a trusted tool, or get a .safetensors release of the model");
    }

    private object PersistentLoad(object? pid)
    {
        // torch.save: ('storage', <storage type>, key, location, numel)
        if (pid is PickleTuple { Count: >= 5 } t && t[0] is "storage" && t[1] is PickleGlobal type && t[2] is string key && t[4] is long numel)
        {
            if (type.Module != "torch" || !StorageTypes.ContainsKey(type.Name)) throw Damaged($"unknown storage type '{type.FullName}'");
            return new StorageRef(key, type.Name, numel);
        }
        throw Damaged("a persistent id that is not a torch storage");
    }

    private object? Call(object? callable, object? argsObj)
    {
        if (callable is not PickleGlobal g) throw Damaged("a call to something that is not a known global");
        var args = argsObj switch
        {
            PickleTuple t => t.Items,
            List<object?> l => l.ToArray(),
            _ => throw Damaged($"arguments to '{g.FullName}' are not a tuple"),
        };
        switch (g.FullName)
        {
            case "collections.OrderedDict":
                return new PickleDict();
            case "torch._utils._rebuild_tensor":
            case "torch._utils._rebuild_tensor_v2":
                if (args.Length < 4 || args[0] is not StorageRef storage || args[1] is not long offset)
                    throw Damaged($"malformed '{g.FullName}' call");
                return new TensorRef(storage, offset, Longs(args[2], g), Longs(args[3], g));
            case "torch._utils._rebuild_parameter":
            case "torch._utils._rebuild_parameter_with_state":
            case "torch.nn.parameter.Parameter":
                return args.Length > 0 ? args[0] : throw Damaged($"malformed '{g.FullName}' call");
            case "torch._tensor._rebuild_from_type_v2":
                // (func, new_type, args, state): rebuild through func (itself an allowed global).
                if (args.Length < 3) throw Damaged($"malformed '{g.FullName}' call");
                return Call(args[0], args[2]);
            case "_codecs.encode":
                return args.Length > 0 && args[0] is string s ? Encoding.Latin1.GetBytes(s) : throw Damaged("malformed '_codecs.encode' call");
            case "builtins.set": case "__builtin__.set": case "builtins.frozenset": case "__builtin__.frozenset":
                return args.Length > 0 && args[0] is List<object?> items ? new List<object?>(items) : new List<object?>();
            default:
                if (g.Module == "torch" && StorageTypes.ContainsKey(g.Name)) throw Damaged($"a direct call to '{g.FullName}'");
                return new PickleObject(g, args);
        }
    }

    private long[] Longs(object? o, PickleGlobal g) => o is PickleTuple t && t.Items.All(x => x is long)
        ? t.Items.Select(x => (long)x!).ToArray()
        : throw Damaged($"malformed '{g.FullName}' call: sizes are not a tuple of integers");

    private void Build(object? target, object? state)
    {
        switch (target)
        {
            case PickleObject o: o.State = state; break;
            // Attributes of a tensor or of a state dict (OrderedDict._metadata: module versions): not needed, and not items.
            case TensorRef or PickleDict: break;
            default: throw Damaged("BUILD on a value that has no state");
        }
    }

    private void SetItem(object? target, object? key, object? value)
    {
        if (target is PickleDict d) d.Set(key, value);
        else if (target is PickleObject o) { o.State ??= new PickleDict(); if (o.State is PickleDict s) s.Set(key, value); }
        else throw Damaged("SETITEM on a value that is not a dict");
    }

    private List<object?> AsList(object? target) => target as List<object?> ?? throw Damaged("APPEND on a value that is not a list");

    private PickleDict DictOf(List<object?> items)
    {
        var d = new PickleDict();
        for (int i = 0; i + 1 < items.Count; i += 2) d.Set(items[i], items[i + 1]);
        return d;
    }
}
