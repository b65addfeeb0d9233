using System.Buffers.Binary;
using System.Numerics;
using System.Text;
using SdLora.IO.Pickle;
using Xunit;

namespace SdLora.Tests.IO;

/// <summary>
/// The restricted unpickler, one opcode at a time, on hand-assembled pickles. Each expectation is what Python's own
/// <c>pickle.loads</c> returns for the same bytes (the opcodes as <c>pickletools</c> documents them), so the checks do not
/// lean on the code under test. The checkpoints other tests build use only a handful of opcodes; real files from older
/// tools (protocol 0 and 1, Python 2) use the rest.
/// </summary>
public class RestrictedUnpicklerTests
{
    private const string File = "model.ckpt";

    /// <summary>A protocol-2 pickle of <paramref name="parts"/> (bytes, chars, strings as Latin-1, byte arrays), ended by STOP.</summary>
    private static byte[] Pickle(params object[] parts)
    {
        var b = new List<byte> { 0x80, 2 };
        foreach (var p in parts)
            switch (p)
            {
                case byte x: b.Add(x); break;
                case int x: b.Add(checked((byte)x)); break;
                case char x: b.Add(checked((byte)x)); break;
                case string s: b.AddRange(Encoding.Latin1.GetBytes(s)); break;
                case byte[] a: b.AddRange(a); break;
                default: throw new ArgumentException(p.ToString());
            }
        b.Add((byte)'.');
        return [.. b];
    }

    private static object? Load(params object[] parts) => RestrictedUnpickler.Load(File, Pickle(parts));

    private static byte[] Le32(int n) { var a = new byte[4]; BinaryPrimitives.WriteInt32LittleEndian(a, n); return a; }
    private static byte[] Le64(long n) { var a = new byte[8]; BinaryPrimitives.WriteInt64LittleEndian(a, n); return a; }
    private static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);
    private static object?[] O(params object?[] items) => items;

    public static TheoryData<string, byte[], object> Scalars => new()
    {
        { "INT", Pickle("I42\n"), 42L },
        { "INT negative", Pickle("I-9\n"), -9L },
        { "INT 01 is True", Pickle("I01\n"), true },
        { "INT 00 is False", Pickle("I00\n"), false },
        { "LONG (text)", Pickle("L-7L\n"), -7L },
        { "BININT", Pickle('J', Le32(-5)), -5L },
        { "BININT1", Pickle('K', 200), 200L },
        { "BININT2", Pickle('M', 0x34, 0x12), 0x1234L },
        { "LONG1", Pickle(0x8a, 2, 0x00, 0x01), 256L },
        { "LONG1 empty is 0", Pickle(0x8a, 0), 0L },
        { "LONG1 negative", Pickle(0x8a, 1, 0xff), -1L },
        { "LONG4", Pickle(0x8b, Le32(2), 0x00, 0x80), -32768L },
        { "BINFLOAT (big-endian)", Pickle('G', 0x3f, 0xf8, 0, 0, 0, 0, 0, 0), 1.5 },
        { "BINUNICODE", Pickle('X', Le32(6), Utf8("héllo")), "héllo" },
        { "SHORT_BINUNICODE", Pickle(0x8c, 3, "abc"), "abc" },
        { "BINUNICODE8", Pickle(0x8d, Le64(2), "ok"), "ok" },
        { "SHORT_BINSTRING (Latin-1)", Pickle('U', 2, 0xe9, 'a'), "éa" },
        { "BINSTRING (Latin-1)", Pickle('T', Le32(1), 0xfc), "ü" },
        { "NEWTRUE", Pickle(0x88), true },
        { "NEWFALSE", Pickle(0x89), false },
        { "FRAME is skipped", Pickle(0x95, Le64(2), 'K', 7), 7L },
    };

    [Theory]
    [MemberData(nameof(Scalars))]
    public void Each_scalar_opcode_gives_the_value_python_gives(string opcode, byte[] pickle, object expected)
    {
        var value = RestrictedUnpickler.Load(File, pickle);
        Assert.True(Equals(expected, value), $"{opcode}: expected {expected} ({expected.GetType().Name}), got {value} ({value?.GetType().Name})");
    }

    [Fact]
    public void A_long_beyond_64_bits_stays_exact()
    {
        var value = Load(0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1);
        Assert.Equal(BigInteger.Pow(2, 64), Assert.IsType<BigInteger>(value));
        Assert.Null(Load('N'));
    }

    public static TheoryData<string, byte[], byte[]> ByteStrings => new()
    {
        { "SHORT_BINBYTES", Pickle('C', 2, 1, 2), [1, 2] },
        { "BINBYTES", Pickle('B', Le32(3), 9, 8, 7), [9, 8, 7] },
        { "BINBYTES8", Pickle(0x8e, Le64(1), 5), [5] },
        { "BYTEARRAY8", Pickle(0x96, Le64(2), 0, 255), [0, 255] },
    };

    [Theory]
    [MemberData(nameof(ByteStrings))]
    public void Byte_strings_come_back_as_bytes(string opcode, byte[] pickle, byte[] expected)
    {
        Assert.True(expected.SequenceEqual(Assert.IsType<byte[]>(RestrictedUnpickler.Load(File, pickle))), opcode);
    }

    [Fact]
    public void Tuples_lists_dicts_and_sets_are_built_as_python_builds_them()
    {
        Assert.Empty(Assert.IsType<PickleTuple>(Load(')')).Items);
        Assert.Equal(O(1L), Assert.IsType<PickleTuple>(Load('K', 1, 0x85)).Items);
        Assert.Equal(O(1L, 2L), Assert.IsType<PickleTuple>(Load('K', 1, 'K', 2, 0x86)).Items);
        Assert.Equal(O(1L, 2L, 3L), Assert.IsType<PickleTuple>(Load('K', 1, 'K', 2, 'K', 3, 0x87)).Items);
        Assert.Equal(O(1L, 2L, 3L, 4L), Assert.IsType<PickleTuple>(Load('(', 'K', 1, 'K', 2, 'K', 3, 'K', 4, 't')).Items);
        Assert.Equal(O(1L, 2L), Assert.IsType<List<object?>>(Load('(', 'K', 1, 'K', 2, 'l')));          // LIST
        Assert.Equal(O(5L), Assert.IsType<List<object?>>(Load(']', 'K', 5, 'a')));                     // APPEND
        Assert.Equal(O(1L, 2L, 3L), Assert.IsType<List<object?>>(Load(']', '(', 'K', 1, 'K', 2, 'K', 3, 'e'))); // APPENDS
        Assert.Equal(O(1L, 2L), Assert.IsType<List<object?>>(Load(0x8f, '(', 'K', 1, 'K', 2, 0x90)));  // EMPTY_SET + ADDITEMS
        Assert.Equal(O(1L, 2L), Assert.IsType<PickleTuple>(Load('(', 'K', 1, 'K', 2, 0x91)).Items);    // FROZENSET

        var dict = Assert.IsType<PickleDict>(Load('(', 0x8c, 1, "a", 'K', 1, 0x8c, 1, "b", 'K', 2, 'd')); // DICT
        Assert.Equal(2, dict.Count);
        Assert.True(dict.TryGet("b", out var b) && b is 2L);
        var items = Assert.IsType<PickleDict>(Load('}', '(', 0x8c, 1, "x", 'K', 3, 0x8c, 1, "y", 'K', 4, 'u')); // SETITEMS
        Assert.Equal(O("x", "y"), items.Items.Select(kv => kv.Key));
        Assert.True(items.TryGet("y", out var y) && y is 4L);
        var one = Assert.IsType<PickleDict>(Load('}', 0x8c, 1, "k", 'N', 's'));                      // SETITEM
        Assert.True(one.TryGet("k", out var k) && k is null);
    }

    [Fact]
    public void The_memo_returns_the_very_object_stored_under_each_key_in_every_encoding()
    {
        static void Same(object? tuple)
        {
            var t = Assert.IsType<PickleTuple>(tuple);
            Assert.IsType<List<object?>>(t[0]);
            Assert.Same(t[0], t[1]);
        }
        Same(Load(']', 'q', 1, 'h', 1, 0x86));                        // BINPUT / BINGET
        Same(Load(']', 'r', Le32(70000), 'j', Le32(70000), 0x86));   // LONG_BINPUT / LONG_BINGET
        Same(Load(']', 0x94, 'h', 0, 0x86));                         // MEMOIZE numbers from 0
        Same(Load(')', 0x94, 0x94, '0', ']', 0x94, 'h', 2, 0x86));   // ... and counts the entries
        Same(Load(']', "p3\n", "g3\n", 0x86));                       // PUT / GET (text)
        Same(Load(']', '2', 0x86));                                  // DUP
    }

    [Fact]
    public void Pop_and_pop_mark_drop_what_python_drops()
    {
        Assert.Equal(1L, Load('K', 1, 'K', 2, '0'));                 // POP
        Assert.Equal(1L, Load('K', 1, '(', 'K', 2, 'K', 3, '1'));    // POP_MARK
    }

    [Fact]
    public void Globals_are_called_as_the_rebuilders_say()
    {
        Assert.IsType<PickleDict>(Load('c', "collections\nOrderedDict\n", ')', 'R'));
        Assert.Equal(O(3L), Assert.IsType<List<object?>>(Load('c', "builtins\nset\n", ']', 'K', 3, 'a', 0x85, 'R')));
        Assert.Empty(Assert.IsType<List<object?>>(Load('c', "__builtin__\nfrozenset\n", ')', 'R')));
        Assert.Equal(new byte[] { 0xe9 }, Assert.IsType<byte[]>(Load('c', "_codecs\nencode\n", 0x8c, 2, Utf8("é"), 0x8c, 6, "latin1", 0x86, 'R')));
        Assert.Equal(7L, Load('c', "torch._utils\n_rebuild_parameter\n", 'K', 7, 'N', 0x86, 'R'));

        // NEWOBJ builds an inert placeholder and BUILD gives it its state; NEWOBJ_EX drops the keyword arguments.
        var ns = Assert.IsType<PickleObject>(Load('c', "argparse\nNamespace\n", ')', 0x81, '}', 0x8c, 1, "a", 'K', 1, 's', 'b'));
        Assert.Equal("argparse.Namespace", ns.Type.FullName);
        Assert.True(Assert.IsType<PickleDict>(ns.State).TryGet("a", out var a) && a is 1L);
        var dt = Assert.IsType<PickleObject>(Load('c', "numpy\ndtype\n", 0x8c, 2, "f4", 0x85, '}', 0x92));
        Assert.Equal(O("f4"), dt.Args);
        // STACK_GLOBAL takes module and name from the stack.
        Assert.Equal(new PickleGlobal("torch", "Size"), Load(0x8c, 5, "torch", 0x8c, 4, "Size", 0x93));
    }

    /// <summary>Every global a checkpoint may name: the rebuilders, the storage types and the inert classes.</summary>
    public static TheoryData<string> Allowed => new()
    {
        "collections.OrderedDict", "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state", "torch._tensor._rebuild_from_type_v2",
        "torch.nn.parameter.Parameter", "_codecs.encode", "builtins.set", "__builtin__.set", "builtins.frozenset",
        "__builtin__.frozenset", "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "pytorch_lightning.callbacks.model_checkpoint", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
        "numpy.dtype", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
        "torch.nn.modules.container.ParameterDict", "torch.Size", "torch.device", "torch.float32", "torch.float16",
        "torch.bfloat16", "argparse.Namespace",
        "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage", "torch.DoubleStorage", "torch.LongStorage",
        "torch.IntStorage", "torch.ShortStorage", "torch.CharStorage", "torch.ByteStorage", "torch.BoolStorage", "torch.UntypedStorage",
    };

    [Theory]
    [MemberData(nameof(Allowed))]
    public void Each_global_a_checkpoint_needs_is_allowed(string fullName)
    {
        int dot = fullName.LastIndexOf('.');
        var g = Assert.IsType<PickleGlobal>(Load('c', $"{fullName[..dot]}\n{fullName[(dot + 1)..]}\n"));
        Assert.Equal(fullName, g.FullName);
    }

    [Theory]
    [InlineData("torch.load")]
    [InlineData("torch.storage._load_from_bytes")]
    [InlineData("torch.hub.load")]
    [InlineData("torch.Parameter")]
    [InlineData("torch.cuda.FloatStorage")]
    [InlineData("numpy.load")]
    [InlineData("numpy.core.multiarray.fromstring")]
    [InlineData("pytorch_lightning.callbacks.Callback")]
    [InlineData("collections.namedtuple")]
    [InlineData("builtins.getattr")]
    [InlineData("subprocess.Popen")]
    public void Any_other_global_is_refused_naming_it(string fullName)
    {
        int dot = fullName.LastIndexOf('.');
        var e = Assert.Throws<SdLoraException>(() => Load('c', $"{fullName[..dot]}\n{fullName[(dot + 1)..]}\n"));
        Assert.Equal($"{File}: refuses to load: the pickle asks for '{fullName}', which a model checkpoint never needs; this file may be malicious — " +
                     "convert it to .safetensors with a trusted tool, or get a .safetensors release of the model", e.Message);
    }

    [Fact]
    public void Damaged_pickles_are_refused_with_what_is_wrong()
    {
        static string Problem(byte[] pickle) => Assert.Throws<SdLoraException>(() => RestrictedUnpickler.Load(File, pickle)).Message;
        string Damaged(string problem) =>
            $"{File}: cannot read its pickle ({problem}); the file is damaged or not a PyTorch checkpoint; re-download it or use a .safetensors version";

        Assert.Equal(Damaged("STOP with 2 values on the stack"), Problem(Pickle('K', 1, 'K', 2)));
        Assert.Equal(Damaged("STOP with 0 values on the stack"), Problem(Pickle()));
        Assert.Equal(Damaged("unknown opcode 0xff at byte 4"), Problem(Pickle('K', 1, 0xff)));
        Assert.Equal(Damaged("memo entry 5 used before it was stored"), Problem(Pickle('h', 5)));
        Assert.Equal(Damaged("stack underflow"), Problem(Pickle('0')));
        Assert.Equal(Damaged("MARK missing"), Problem(Pickle('K', 1, 't')));
        Assert.Equal(Damaged("bad integer 'x1'"), Problem(Pickle("Ix1\n")));
        Assert.Equal(Damaged("APPEND on a value that is not a list"), Problem(Pickle('K', 1, 'K', 2, 'a')));
        Assert.Equal(Damaged("SETITEM on a value that is not a dict"), Problem(Pickle(']', 'K', 1, 'K', 2, 's')));
        Assert.Equal(Damaged("BUILD on a value that has no state"), Problem(Pickle('K', 1, '}', 'b')));
        Assert.Equal(Damaged("a call to something that is not a known global"), Problem(Pickle('K', 1, ')', 'R')));
        Assert.Equal(Damaged("arguments to 'collections.OrderedDict' are not a tuple"), Problem(Pickle('c', "collections\nOrderedDict\n", 'K', 1, 'R')));
        Assert.Equal(Damaged("a direct call to 'torch.FloatStorage'"), Problem(Pickle('c', "torch\nFloatStorage\n", ')', 'R')));
        Assert.Equal(Damaged("STACK_GLOBAL without a module name"), Problem(Pickle('K', 1, 0x8c, 1, "x", 0x93)));
        Assert.Equal(Damaged("a persistent id that is not a torch storage"), Problem(Pickle('K', 1, 'Q')));

        var truncated = Pickle('X', Le32(100), "abc")[..^1];
        Assert.Equal($"{File}: its pickle ends early at byte {truncated.Length} (truncated); the file is damaged or incompletely downloaded; re-download it",
            Assert.Throws<SdLoraException>(() => RestrictedUnpickler.Load(File, truncated)).Message);
    }

    [Fact]
    public void The_rarer_damage_is_named_too()
    {
        static string Problem(byte[] pickle) => Assert.Throws<SdLoraException>(() => RestrictedUnpickler.Load(File, pickle)).Message;
        string Damaged(string problem) =>
            $"{File}: cannot read its pickle ({problem}); the file is damaged or not a PyTorch checkpoint; re-download it or use a .safetensors version";
        string Truncated(int at) =>
            $"{File}: its pickle ends early at byte {at} (truncated); the file is damaged or incompletely downloaded; re-download it";

        Assert.Equal(Damaged("stack underflow"), Problem(Pickle('(', 'u')));                 // SETITEMS with nothing under the mark
        Assert.Equal(Damaged("STACK_GLOBAL without a name"), Problem(Pickle(0x8c, 5, "torch", 'K', 1, 0x93)));
        Assert.Equal(Damaged("unknown storage type 'collections.OrderedDict'"),
            Problem(Pickle('(', 0x8c, 7, "storage", 'c', "collections\nOrderedDict\n", 0x8c, 1, "0", 0x8c, 3, "cpu", 'K', 4, 't', 'Q')));
        Assert.Equal(Damaged("malformed 'torch._utils._rebuild_tensor_v2' call"), Problem(Pickle('c', "torch._utils\n_rebuild_tensor_v2\n", ')', 'R')));
        Assert.Equal(Damaged("malformed 'torch._utils._rebuild_parameter' call"), Problem(Pickle('c', "torch._utils\n_rebuild_parameter\n", ')', 'R')));
        Assert.Equal(Damaged("malformed 'torch._tensor._rebuild_from_type_v2' call"),
            Problem(Pickle('c', "torch._tensor\n_rebuild_from_type_v2\n", '(', 'K', 1, 'K', 2, 't', 'R')));
        Assert.Equal(Damaged("malformed '_codecs.encode' call"), Problem(Pickle('c', "_codecs\nencode\n", '(', 'K', 1, 't', 'R')));

        // Cut anywhere: in the opcode stream, inside an argument, inside a text line.
        Assert.Equal(Truncated(4), Problem([0x80, 2, (byte)'K', 1]));
        Assert.Equal(Truncated(3), Problem([0x80, 2, (byte)'K']));
        Assert.Equal(Truncated(5), Problem([0x80, 2, (byte)'I', (byte)'4', (byte)'2']));
    }

    [Fact]
    public void Items_set_on_an_object_become_its_state_and_a_none_key_stays_none()
    {
        var o = Assert.IsType<PickleObject>(Load('c', "argparse\nNamespace\n", ')', 'R', '(', 0x8c, 2, "lr", 'K', 3, 'u'));
        var state = Assert.IsType<PickleDict>(o.State);
        Assert.True(state.TryGet("lr", out var lr));
        Assert.Equal(3L, lr);

        var d = Assert.IsType<PickleDict>(Load('}', 'N', 'K', 1, 's', 0x8c, 1, "a", 'K', 2, 's'));
        Assert.Equal([null, "a"], d.Items.Select(kv => kv.Key));
        Assert.Equal([1L, 2L], d.Items.Select(kv => kv.Value));
    }

    [Fact]
    public void The_64_bit_edges_of_LONG1_are_longs_and_beyond_them_big_integers()
    {
        Assert.Equal(long.MinValue, Load(0x8a, 8, 0, 0, 0, 0, 0, 0, 0, 0x80));
        Assert.Equal(long.MaxValue, Load(0x8a, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f));
        Assert.Equal(System.Numerics.BigInteger.Pow(2, 63), Load(0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0x80, 0));
        Assert.Equal(-System.Numerics.BigInteger.Pow(2, 63) - 1, Load(0x8a, 9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff));
    }
}
