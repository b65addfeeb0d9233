using System.Text;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests;

public class SafetensorsTests
{
    [Fact]
    public void Reads_golden_fixture_header_and_fp16_weights()
    {
        using var f = SafetensorsFile.Open(Fixtures.CopiedSet("tiny-sd15/unet/diffusion_pytorch_model.safetensors"));
        Assert.Equal(684, f.Entries.Count);
        Assert.Equal("pt", f.Metadata["format"]);
        var e = f["conv_in.weight"];
        Assert.Equal("F16", e.DType);
        Assert.Equal(new long[] { 32, 4, 3, 3 }, e.Shape);
        using var t = f.Load("conv_in.weight", ScalarType.Float32);
        Assert.Equal(ScalarType.Float32, t.dtype);
        Assert.True(t.abs().sum().item<float>() > 0);
    }

    [Fact]
    public void Opens_through_a_symbolic_link()
    {
        using var tmp = Fixtures.TempDir();
        var target = Fixtures.CopiedSet("tiny-sd15/unet/diffusion_pytorch_model.safetensors");
        var link = tmp.File("linked.safetensors");
        File.CreateSymbolicLink(link, target);
        using var viaLink = SafetensorsFile.Open(link);
        using var direct = SafetensorsFile.Open(target);
        Assert.Equal(direct.Keys, viaLink.Keys);
        using var a = viaLink.Load("conv_in.weight");
        using var b = direct.Load("conv_in.weight");
        Assert.True(a.equal(b).all().item<bool>());
    }

    [Fact]
    public void Save_then_load_roundtrips_every_dtype_and_metadata()
    {
        using var tmp = Fixtures.TempDir();
        var path = tmp.File("x.safetensors");
        var tensors = new Dictionary<string, Tensor>
        {
            ["a.f32"] = torch.randn(3, 5),
            ["b.f16"] = torch.randn(7).to(ScalarType.Float16),
            ["c.bf16"] = torch.randn(2, 2).to(ScalarType.BFloat16),
            ["d.i64"] = torch.arange(10L),
            ["e.u8"] = torch.arange(6).to(ScalarType.Byte).reshape(2, 3),
            ["f.scalar"] = torch.tensor(2.5f),
        };
        Safetensors.Save(path, tensors, new Dictionary<string, string> { ["ss_network_dim"] = "4", ["note"] = "ünïcode" });
        using var f = SafetensorsFile.Open(path);
        Assert.Equal("4", f.Metadata["ss_network_dim"]);
        Assert.Equal("ünïcode", f.Metadata["note"]);
        foreach (var (k, v) in tensors)
        {
            using var back = f.Load(k);
            Assert.Equal(v.dtype, back.dtype);
            Assert.Equal(v.shape, back.shape);
            Assert.True(v.equal(back).all().item<bool>(), k);
        }
        Assert.Empty(Directory.GetFiles(tmp.Path, "*.tmp"));
    }

    private static byte[] Build(string header, int dataBytes)
    {
        var h = Encoding.UTF8.GetBytes(header);
        return BitConverter.GetBytes((long)h.Length).Concat(h).Concat(new byte[dataBytes]).ToArray();
    }

    [Theory]
    [InlineData("short", "shorter than the 8-byte header length")]
    [InlineData("len", "runs past the end")]
    [InlineData("json", "header is not valid JSON")]
    [InlineData("range", "lie outside the")]
    [InlineData("overlap", "overlap")]
    [InlineData("size", "needs 16")]
    [InlineData("dtype", "unknown dtype 'F8'")]
    public void Malformed_files_give_one_line_error_naming_the_file(string kind, string expected)
    {
        using var tmp = Fixtures.TempDir();
        var path = tmp.File(kind + ".safetensors");
        byte[] bytes = kind switch
        {
            "short" => new byte[] { 1, 2, 3 },
            "len" => BitConverter.GetBytes(1000L).Concat(Encoding.UTF8.GetBytes("{}")).ToArray(),
            "json" => Build("{\"a\": {\"dtype\": ", 0),
            "range" => Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8),
            "overlap" => Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24),
            "size" => Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,12]}}", 16),
            "dtype" => Build("{\"a\":{\"dtype\":\"F8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4),
            _ => throw new ArgumentException(kind),
        };
        File.WriteAllBytes(path, bytes);
        var ex = Assert.Throws<SdLoraException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(path, ex.Message);
        Assert.Contains(expected, ex.Message);
        Assert.DoesNotContain("\n", ex.Message);
    }

    [Fact]
    public void Missing_file_is_a_clear_error()
    {
        var ex = Assert.Throws<SdLoraException>(() => SafetensorsFile.Open("/nonexistent/model.safetensors"));
        Assert.Contains("/nonexistent/model.safetensors", ex.Message);
    }
}
