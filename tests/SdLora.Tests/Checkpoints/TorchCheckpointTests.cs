using SdLora.IO.Pickle;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Checkpoints;

public class TorchCheckpointTests
{
    private static byte[] Bytes<T>(params T[] values) where T : unmanaged =>
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    /// <summary>{"state_dict": OrderedDict{a: fp32 [2,3], b: fp16 [4], at: a's storage transposed, off: offset view}, "callbacks": {ModelCheckpoint: ...}}</summary>
    private static void WriteValid(string path, string prefix = "archive")
    {
        var w = new PickleWriter();
        w.EmptyDict().Put().Mark();
        w.Str("epoch").Int(3);
        w.Str("callbacks").EmptyDict().Put().Global("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint").EmptyDict().Mark().Str("best_model_score").None().SetItems().SetItem();
        w.Str("state_dict").Global("collections", "OrderedDict").EmptyTuple().Reduce().Put().Mark();
        w.Str("a").Tensor("FloatStorage", "0", 6, 0, [2, 3], [3, 1]);
        w.Str("b").Tensor("HalfStorage", "1", 4, 0, [4], [1]);
        w.Str("at").Tensor("FloatStorage", "0", 6, 0, [3, 2], [1, 3]);
        w.Str("off").Tensor("FloatStorage", "0", 6, 1, [2, 2], [3, 1]);
        w.Str("not_a_tensor").Int(5);
        w.SetItems();
        w.SetItems().Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]>
        {
            ["0"] = Bytes(1f, 2f, 3f, 4f, 5f, 6f),
            ["1"] = Bytes((Half)0.5f, (Half)(-1.5f), (Half)2f, (Half)1024f),
        }, prefix);
    }

    [Theory]
    [InlineData("archive")]
    [InlineData("v1-5-pruned-emaonly")]
    public void Zip_checkpoint_loads_fp32_fp16_and_strided_views_lazily(string prefix)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("model.ckpt");
        WriteValid(path, prefix);
        using var ckpt = TorchCheckpoint.Open(path);
        Assert.Equal(["a", "b", "at", "off"], ckpt.Names);
        Assert.Equal([3L, 2L], ckpt.ShapeOf("at"));
        Assert.Equal(ScalarType.Float16, ckpt.DTypeOf("b"));
        using var a = ckpt.Load("a");
        Assert.Equal(ScalarType.Float32, a.dtype);
        Assert.Equal(new float[] { 1, 2, 3, 4, 5, 6 }, a.data<float>().ToArray());
        using var b = ckpt.Load("b");
        Assert.Equal(ScalarType.Float16, b.dtype);
        using var b32 = ckpt.Load("b", ScalarType.Float32);
        Assert.Equal(new float[] { 0.5f, -1.5f, 2f, 1024f }, b32.data<float>().ToArray());
        using var at = ckpt.Load("at");
        Assert.Equal(new float[] { 1, 4, 2, 5, 3, 6 }, at.data<float>().ToArray());
        using var off = ckpt.Load("off");
        Assert.Equal([2L, 2L], off.shape);
        Assert.Equal(new float[] { 2, 3, 5, 6 }, off.data<float>().ToArray());
    }

    [Fact]
    public void Offset_view_reads_only_its_part_of_the_storage()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("m.ckpt");
        var w = new PickleWriter();
        w.EmptyDict().Put().Mark().Str("x").Tensor("FloatStorage", "7", 8, 3, [2, 2], [2, 1]).SetItems().Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]> { ["7"] = Bytes(0f, 1f, 2f, 3f, 4f, 5f, 6f, 7f) });
        using var ckpt = TorchCheckpoint.Open(path);
        using var x = ckpt.Load("x");
        Assert.Equal(new float[] { 3, 4, 5, 6 }, x.data<float>().ToArray());
    }

    [Fact]
    public void State_dict_metadata_attribute_is_not_taken_for_a_tensor()
    {
        // torch.save(model.state_dict()): OrderedDict items, then BUILD {'_metadata': OrderedDict({'': {'version': 1}})}.
        using var dir = Fixtures.TempDir();
        var path = dir.File("sd.pt");
        var w = new PickleWriter();
        w.Global("collections", "OrderedDict").EmptyTuple().Reduce().Put().Mark().Str("w").Tensor("FloatStorage", "0", 1, 0, [1], [1]).SetItems();
        w.EmptyDict().Put().Str("_metadata").Global("collections", "OrderedDict").EmptyTuple().Reduce().Put()
            .Str("").EmptyDict().Put().Str("version").Int(1).SetItem().SetItem().SetItem().Op((byte)'b').Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]> { ["0"] = Bytes(7f) });
        using var ckpt = TorchCheckpoint.Open(path);
        Assert.Equal(["w"], ckpt.Names);
        using var t = ckpt.Load("w");
        Assert.Equal(7f, t.item<float>());
    }

    [Fact]
    public void Malicious_global_is_refused_with_a_clear_message()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("evil.ckpt");
        var w = new PickleWriter();
        w.Global("os", "system").Mark().Str("echo pwned").Tuple().Reduce().Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]>());
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Equal($"{path}: refuses to load: the pickle asks for 'os.system', which a model checkpoint never needs; this file may be malicious — convert it to .safetensors with a trusted tool, or get a .safetensors release of the model", e.Message);
    }

    [Fact]
    public void Builtins_eval_through_stack_global_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("evil.ckpt");
        var w = new PickleWriter();
        w.Str("builtins").Str("eval").Op(0x93).Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]>());
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Contains("refuses to load: the pickle asks for 'builtins.eval'", e.Message);
    }

    // torch's own namespace holds code runners too (torch.load re-enters unpickling, torch.hub downloads and runs
    // code, torch.jit compiles); only the storage types and tensor rebuilders may be named. Near misses of
    // allowed names (another module, a prefix) must not slip through either.
    [Theory]
    [InlineData("torch", "load")]
    [InlineData("torch.hub", "load")]
    [InlineData("torch.jit", "load")]
    [InlineData("torch", "as_tensor")]
    [InlineData("torch._utils", "_rebuild_device_tensor_from_numpy")]
    [InlineData("torch.storage", "FloatStorage")]
    [InlineData("torch", "FloatStorageX")]
    [InlineData("collections", "defaultdict")]
    [InlineData("numpy", "load")]
    [InlineData("pytorch_lightning.callbacks", "LambdaCallback")]
    public void Globals_outside_the_allow_list_are_refused_even_inside_torch(string module, string name)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("evil.ckpt");
        var w = new PickleWriter();
        w.Str(module).Str(name).Op(0x93).Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]>());
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Contains($"refuses to load: the pickle asks for '{module}.{name}'", e.Message);
    }

    [Fact]
    public void Unknown_opcode_is_reported_with_its_position()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("bad.ckpt");
        var w = new PickleWriter();
        w.EmptyDict().Op(0xff).Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]>());
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Equal($"{path}: cannot read its pickle (unknown opcode 0xff at byte 3); the file is damaged or not a PyTorch checkpoint; re-download it or use a .safetensors version", e.Message);
    }

    [Fact]
    public void Truncated_pickle_is_reported()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("cut.ckpt");
        var w = new PickleWriter();
        w.EmptyDict().Put().Mark().Str("a").Tensor("FloatStorage", "0", 6, 0, [2, 3], [3, 1]).SetItems().Stop();
        var bytes = w.ToArray();
        TorchZipWriter.Write(path, bytes[..(bytes.Length / 2)], new Dictionary<string, byte[]> { ["0"] = new byte[24] });
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Contains("its pickle ends early", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void Missing_storage_entry_is_reported_when_the_tensor_is_loaded()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("nostorage.ckpt");
        var w = new PickleWriter();
        w.EmptyDict().Put().Mark().Str("a").Tensor("FloatStorage", "0", 6, 0, [2, 3], [3, 1]).SetItems().Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]>());
        using var ckpt = TorchCheckpoint.Open(path);
        var e = Assert.Throws<SdLoraException>(() => ckpt.Load("a"));
        Assert.Equal($"{path}: tensor 'a' needs storage '0' (archive/data/0), which the zip lacks; the file is damaged; re-download it", e.Message);
    }

    [Fact]
    public void Short_storage_is_reported()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("short.ckpt");
        var w = new PickleWriter();
        w.EmptyDict().Put().Mark().Str("a").Tensor("FloatStorage", "0", 6, 0, [2, 3], [3, 1]).SetItems().Stop();
        TorchZipWriter.Write(path, w.ToArray(), new Dictionary<string, byte[]> { ["0"] = new byte[8] });
        using var ckpt = TorchCheckpoint.Open(path);
        var e = Assert.Throws<SdLoraException>(() => ckpt.Load("a"));
        Assert.Contains("storage '0' of tensor 'a' is shorter than the tensor needs", e.Message);
    }

    [Fact]
    public void Non_zip_file_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("x.ckpt");
        File.WriteAllText(path, "hello, not a checkpoint");
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Equal($"{path}: is not a PyTorch zip checkpoint (it does not start with a zip header); the file is damaged or of another kind; re-download it or use a .safetensors version", e.Message);
    }

    [Fact]
    public void Legacy_torch_format_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("old.pt");
        File.WriteAllBytes(path, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Contains("legacy (pre-1.6, non-zip) format", e.Message);
    }
}
