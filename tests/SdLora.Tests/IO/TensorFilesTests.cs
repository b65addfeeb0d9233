using System.Text;
using SdLora.IO;
using SdLora.IO.Pickle;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.IO;

/// <summary>
/// <see cref="TensorFiles.Open"/> decides by a file's first bytes, not its name: what a failed download leaves behind
/// (an error page, an empty file, an image) is named as such, and a safetensors file under a .ckpt name still opens.
/// </summary>
public sealed class TensorFilesTests
{
    private static string Write(TempDir dir, string name, byte[] bytes)
    {
        var path = dir.File(name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Fact]
    public void An_error_page_saved_as_a_checkpoint_is_named_an_html_page()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "model.ckpt", Encoding.ASCII.GetBytes("<!DOCTYPE html><html><body>Access denied: sign in to download this file</body></html>\n"));
        var e = Assert.Throws<SdLoraException>(() => TensorFiles.Open(path));
        Assert.Equal($"{path}: is not a PyTorch checkpoint (neither a zip nor a pickle: it is an HTML page starting \"<!DOCTYPE html><html><body>Access denied...\"); "
            + "the download probably failed or saved an error page: re-download it", e.Message);
    }

    [Theory]
    [InlineData("model.pt", new byte[0], "it is empty")]
    [InlineData("model.bin", new byte[] { 0xFF, 0xD8, 0xFF, 0xE0, 0, 16, (byte)'J', (byte)'F', (byte)'I', (byte)'F' }, "it is a JPEG image")]
    [InlineData("model.pth", new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 13, 10, 26, 10, 0, 0, 0, 13 }, "it is a PNG image")]
    [InlineData("model.CKPT", new byte[] { (byte)'o', (byte)'k', 10 }, "it is a text file starting \"ok\"")]
    public void A_checkpoint_name_on_something_else_says_what_it_is(string name, byte[] bytes, string what)
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, name, bytes);
        var e = Assert.Throws<SdLoraException>(() => TensorFiles.Open(path));
        Assert.Equal($"{path}: is not a PyTorch checkpoint (neither a zip nor a pickle: {what}); the download probably failed or saved an error page: re-download it", e.Message);
    }

    [Fact]
    public void Binary_bytes_under_a_checkpoint_name_are_not_described()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "model.ckpt", [0, 1, 2, 3, 200, 201, 7, 8, 9, 10, 11, 12]);
        var e = Assert.Throws<SdLoraException>(() => TensorFiles.Open(path));
        Assert.Equal($"{path}: is not a PyTorch checkpoint (neither a zip nor a pickle); the download probably failed or saved an error page: re-download it", e.Message);
    }

    [Fact]
    public void Text_under_another_name_is_not_a_model_file()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "weights.model", Encoding.ASCII.GetBytes("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n"));
        var e = Assert.Throws<SdLoraException>(() => TensorFiles.Open(path));
        Assert.Equal($"{path}: is not a model file: it is a text file starting \"version https://git-lfs.github.com/spec/...\"; pass a .safetensors or .ckpt file", e.Message);
    }

    [Fact]
    public void A_broken_safetensors_file_is_reported_by_the_safetensors_reader()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "model.safetensors", Encoding.ASCII.GetBytes("not found\n"));
        var e = Assert.Throws<SdLoraException>(() => TensorFiles.Open(path));
        Assert.StartsWith($"{path}: not a valid safetensors file (", e.Message);
    }

    [Fact]
    public void Safetensors_content_opens_whatever_the_file_is_called()
    {
        using var dir = Fixtures.TempDir();
        using var scope = torch.NewDisposeScope();
        var path = dir.File("model.ckpt");
        Safetensors.Save(path, new Dictionary<string, Tensor> { ["w"] = torch.arange(6, dtype: ScalarType.Float16).reshape(2, 3) },
            new Dictionary<string, string> { ["ss_network_dim"] = "4" });
        var source = TensorFiles.Open(path);
        using var disposable = source as IDisposable;
        Assert.IsType<SafetensorsFile>(source);
        Assert.Equal(ScalarType.Float16, TensorFiles.DTypeOf(source, "w"));
        Assert.Equal("4", TensorFiles.MetadataOf(source)["ss_network_dim"]);
    }

    [Fact]
    public void A_legacy_torch_pickle_goes_to_the_checkpoint_reader_and_is_refused_there()
    {
        using var dir = Fixtures.TempDir();
        // torch.save before 1.6: pickle protocol 2, then the magic number as a LONG1 (0x8a 0x0a ...)
        var path = Write(dir, "old.pt", [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
        var e = Assert.Throws<SdLoraException>(() => TensorFiles.Open(path));
        Assert.StartsWith($"{path}: is in PyTorch's legacy (pre-1.6, non-zip) format", e.Message);
    }

    [Fact]
    public void Metadata_and_dtype_of_in_memory_tensors()
    {
        using var scope = torch.NewDisposeScope();
        var source = new DictionaryTensorSource(new Dictionary<string, Tensor> { ["b"] = torch.zeros(2, ScalarType.BFloat16) });
        Assert.Equal(ScalarType.BFloat16, TensorFiles.DTypeOf(source, "b"));
        Assert.Empty(TensorFiles.MetadataOf(source));
    }
}
