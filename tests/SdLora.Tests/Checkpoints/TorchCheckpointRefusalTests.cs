using System.IO.Compression;
using System.Text;
using SdLora.IO.Pickle;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Checkpoints;

/// <summary>Every refusal of a damaged or foreign <c>.ckpt</c>, one file each, with its whole message.</summary>
public class TorchCheckpointRefusalTests
{
    private static byte[] OneTensor(long offset = 0, long[]? shape = null, long[]? stride = null, long numel = 6) =>
        new PickleWriter().EmptyDict().Put().Mark().Str("a").Tensor("FloatStorage", "0", numel, offset, shape ?? [2, 3], stride ?? [3, 1]).SetItems().Stop().ToArray();

    private static void Zip(string path, params (string Name, byte[] Data)[] entries)
    {
        using var fs = File.Create(path);
        using var zip = new ZipArchive(fs, ZipArchiveMode.Create);
        foreach (var (name, data) in entries)
        {
            using var s = zip.CreateEntry(name, CompressionLevel.NoCompression).Open();
            s.Write(data);
        }
    }

    [Fact]
    public void A_zip_without_a_data_pkl_is_not_a_checkpoint()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("photos.ckpt");
        // data.pkl must sit one folder deep, as torch.save puts it: one at the top or two deep does not count.
        Zip(path, ("data.pkl", OneTensor()), ("a/b/data.pkl", OneTensor()), ("readme.txt", "hi"u8.ToArray()));
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Equal($"{path}: is a zip without a data.pkl, so not a PyTorch checkpoint; use the model's .safetensors or .ckpt file", e.Message);
    }

    [Fact]
    public void A_zip_cut_short_is_not_readable()
    {
        using var dir = Fixtures.TempDir();
        var whole = dir.File("whole.ckpt");
        TorchZipWriter.Write(whole, OneTensor(), new Dictionary<string, byte[]> { ["0"] = new byte[24] });
        var path = dir.File("cut.ckpt");
        File.WriteAllBytes(path, File.ReadAllBytes(whole)[..40]); // the local header survives, the central directory does not
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.StartsWith($"{path}: is not a readable zip (", e.Message);
        Assert.EndsWith("); the file is damaged or incompletely downloaded; re-download it", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("big", true)]
    [InlineData("big\n", true)]
    [InlineData("little", false)]
    public void Big_endian_storages_are_refused_and_little_endian_ones_read(string order, bool refused)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("order.ckpt");
        Zip(path, ("archive/data.pkl", OneTensor()), ("archive/byteorder", Encoding.ASCII.GetBytes(order)), ("archive/data/0", new byte[24]));
        if (!refused)
        {
            using var ok = TorchCheckpoint.Open(path);
            using var t = ok.Load("a");
            Assert.Equal([2L, 3], t.shape);
            return;
        }
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Equal($"{path}: stores big-endian tensors, which sdlora does not read; convert it to .safetensors on the machine that made it", e.Message);
    }

    [Theory]
    [InlineData("list")]
    [InlineData("number")]
    public void A_pickle_that_is_not_a_dict_holds_no_state_dict(string what)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File(what + ".ckpt");
        var w = new PickleWriter();
        var pickle = what == "list" ? w.Mark().Int(1).Int(2).Tuple().Stop().ToArray() : w.Int(7).Stop().ToArray();
        TorchZipWriter.Write(path, pickle, new Dictionary<string, byte[]>());
        var e = Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open(path));
        Assert.Equal($"{path}: holds no state dict (a dict of tensors); it is not a model checkpoint", e.Message);
    }

    [Fact]
    public void A_lightning_checkpoint_reads_its_state_dict_and_a_plain_dict_reads_itself()
    {
        using var dir = Fixtures.TempDir();
        using var x = torch.arange(6, dtype: ScalarType.Float32).reshape(2, 3);
        var wrapped = dir.File("wrapped.ckpt");
        TorchZipWriter.WriteStateDict(wrapped, [("model.x", x)], wrap: true);
        using (var c = TorchCheckpoint.Open(wrapped)) Assert.Equal(["model.x"], c.Keys);
        var plain = dir.File("plain.ckpt");
        TorchZipWriter.WriteStateDict(plain, [("model.x", x)], wrap: false);
        using (var c = TorchCheckpoint.Open(plain)) Assert.Equal(["model.x"], c.Keys);
    }

    public static TheoryData<string, long, long[], long[], long> Views() => new()
    {
        { "negative-offset", -1, [2, 3], [3, 1], 6 },
        { "negative-stride", 0, [2, 3], [-3, 1], 6 },
        { "rank-mismatch", 0, [2, 3], [3], 6 },
        { "past-the-end", 1, [2, 3], [3, 1], 6 },
        { "strided-past-the-end", 0, [2, 3], [4, 1], 6 },
    };

    [Theory]
    [MemberData(nameof(Views))]
    public void A_view_outside_its_storage_is_refused_when_the_tensor_is_loaded(string name, long offset, long[] shape, long[] stride, long numel)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File(name + ".ckpt");
        TorchZipWriter.Write(path, OneTensor(offset, shape, stride, numel), new Dictionary<string, byte[]> { ["0"] = new byte[numel * 4] });
        using var ckpt = TorchCheckpoint.Open(path);
        var e = Assert.Throws<SdLoraException>(() => ckpt.Load("a"));
        Assert.Equal($"{path}: tensor 'a' describes a view outside its storage; the file is damaged; re-download it", e.Message);
    }

    [Fact]
    public void A_view_that_ends_exactly_at_the_end_of_its_storage_reads()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("edge.ckpt");
        var storage = Enumerable.Range(0, 8).SelectMany(i => BitConverter.GetBytes((float)i)).ToArray();
        TorchZipWriter.Write(path, OneTensor(offset: 2, shape: [2, 3], stride: [3, 1], numel: 8), new Dictionary<string, byte[]> { ["0"] = storage });
        using var ckpt = TorchCheckpoint.Open(path);
        using var t = ckpt.Load("a");
        Assert.Equal([2f, 3, 4, 5, 6, 7], t.data<float>().ToArray());
    }

    [Fact]
    public void A_tensor_name_that_is_not_there_is_named()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("one.ckpt");
        TorchZipWriter.Write(path, OneTensor(), new Dictionary<string, byte[]> { ["0"] = new byte[24] });
        using var ckpt = TorchCheckpoint.Open(path);
        Assert.Equal($"{path}: has no tensor 'b'", Assert.Throws<SdLoraException>(() => ckpt.Load("b")).Message);
        Assert.Equal($"/nowhere/x.ckpt: file not found; check the path", Assert.Throws<SdLoraException>(() => TorchCheckpoint.Open("/nowhere/x.ckpt")).Message);
    }

    public static TheoryData<string, ScalarType, int> StorageTypes() => new()
    {
        { "FloatStorage", ScalarType.Float32, 4 }, { "HalfStorage", ScalarType.Float16, 2 }, { "BFloat16Storage", ScalarType.BFloat16, 2 },
        { "DoubleStorage", ScalarType.Float64, 8 }, { "LongStorage", ScalarType.Int64, 8 }, { "IntStorage", ScalarType.Int32, 4 },
        { "ShortStorage", ScalarType.Int16, 2 }, { "CharStorage", ScalarType.Int8, 1 }, { "ByteStorage", ScalarType.Byte, 1 },
        { "BoolStorage", ScalarType.Bool, 1 }, { "UntypedStorage", ScalarType.Byte, 1 },
    };

    /// <summary>Each storage type torch.save writes is read as its own dtype, bytes as they are.</summary>
    [Theory]
    [MemberData(nameof(StorageTypes))]
    public void Each_storage_type_is_read_as_its_dtype(string storageType, ScalarType dtype, int elementBytes)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("t.ckpt");
        using var expected = torch.tensor(new byte[] { 1, 0, 1 }).to(dtype);
        var pickle = new PickleWriter().EmptyDict().Put().Mark().Str("t").Tensor(storageType, "0", 3, 0, [3], [1]).SetItems().Stop().ToArray();
        var bytes = expected.bytes.ToArray();
        Assert.Equal(3 * elementBytes, bytes.Length);
        TorchZipWriter.Write(path, pickle, new Dictionary<string, byte[]> { ["0"] = bytes });
        using var ckpt = TorchCheckpoint.Open(path);
        Assert.Equal(dtype, ckpt.DTypeOf("t"));
        using var t = ckpt.Load("t");
        Assert.Equal(dtype, t.dtype);
        Assert.True(t.equal(expected).all().item<bool>());
    }
}
