using System.Text;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.IO;

/// <summary>
/// Every refusal of a malformed safetensors file, one file each, with the whole message (a message matched by a
/// fragment lets the rest of it rot), and the dtype codes both ways.
/// </summary>
public class SafetensorsValidationTests
{
    private static byte[] File8(long headerLength, string header, int dataBytes)
    {
        var h = Encoding.UTF8.GetBytes(header);
        return BitConverter.GetBytes(headerLength).Concat(h).Concat(new byte[dataBytes]).ToArray();
    }

    private static byte[] Build(string header, int dataBytes) => File8(Encoding.UTF8.GetByteCount(header), header, dataBytes);

    public static TheoryData<string, byte[], string> Refusals() => new()
    {
        { "empty", [], "only 0 bytes, shorter than the 8-byte header length" },
        { "seven", [1, 2, 3, 4, 5, 6, 7], "only 7 bytes, shorter than the 8-byte header length" },
        { "zero-length", File8(0, "{}", 0), "header length 0 runs past the end of the 10-byte file" },
        { "negative-length", File8(-5, "{}", 0), "header length -5 runs past the end of the 10-byte file" },
        { "long-length", File8(3, "{}", 0), "header length 3 runs past the end of the 10-byte file" },
        { "not-json", Build("{\"a\": ", 0), "header is not valid JSON: *" }, // the rest is .NET's JSON reader's own words
        { "array", Build("[1, 2]", 0), "header is not a JSON object" },
        { "metadata-array", Build("{\"__metadata__\": [1]}", 0), "__metadata__ is not an object" },
        { "not-object", Build("{\"a\": 3}", 0), "tensor 'a' lacks dtype, shape or data_offsets" },
        { "no-dtype", Build("{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4), "tensor 'a' lacks dtype, shape or data_offsets" },
        { "no-shape", Build("{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4), "tensor 'a' lacks dtype, shape or data_offsets" },
        { "no-offsets", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4), "tensor 'a' lacks dtype, shape or data_offsets" },
        { "dtype-number", Build("{\"a\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4), "tensor 'a' lacks dtype, shape or data_offsets" },
        { "shape-string", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": \"1\", \"data_offsets\": [0, 4]}}", 4), "tensor 'a' lacks dtype, shape or data_offsets" },
        { "offsets-string", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": \"0\"}}", 4), "tensor 'a' lacks dtype, shape or data_offsets" },
        { "three-offsets", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8), "tensor 'a' lacks dtype, shape or data_offsets" },
        { "unknown-dtype", Build("{\"a\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1), "tensor 'a' has unknown dtype 'F8_E4M3'" },
        { "negative-dim", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4), "tensor 'a' has an invalid shape" },
        { "fractional-dim", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4), "tensor 'a' has an invalid shape" },
        { "negative-offset", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4), "tensor 'a' data_offsets [-4, 0] lie outside the 4-byte data section" },
        { "reversed-offsets", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4), "tensor 'a' data_offsets [4, 0] lie outside the 4-byte data section" },
        { "past-the-end", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4), "tensor 'a' data_offsets [0, 8] lie outside the 4-byte data section" },
        { "offset-string", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [\"0\", 4]}}", 4), "header has a value of the wrong type: *" },
        { "dim-string", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]}}", 4), "header has a value of the wrong type: *" },
        { "size", Build("{\"a\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [0, 4]}}", 4), "tensor 'a' has 4 bytes but shape [3] x F16 needs 6" },
        { "overlap", Build("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, \"b\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 12),
            "tensors 'a' and 'b' overlap" },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public void Each_malformed_file_is_refused_with_its_own_one_line_message(string name, byte[] bytes, string problem)
    {
        using var tmp = Fixtures.TempDir();
        var path = tmp.File(name + ".safetensors");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<SdLoraException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.DoesNotContain('\n', e.Message);
        if (!problem.EndsWith('*'))
            Assert.Equal($"{path}: not a valid safetensors file ({problem}); re-download or re-export it", e.Message);
        else
        {
            Assert.StartsWith($"{path}: not a valid safetensors file ({problem.TrimEnd('*')}", e.Message);
            Assert.EndsWith("); re-download or re-export it", e.Message);
        }
    }

    [Theory]
    [InlineData(100_000_001L, "header length 100000001 is implausibly large")]
    [InlineData(100_000_000L, "header is not valid JSON: ")] // the largest header read (zeros here)
    public void A_header_length_over_100_MB_is_refused_before_it_is_read(long headerLength, string problem)
    {
        using var tmp = Fixtures.TempDir();
        var path = tmp.File("huge.safetensors");
        using (var fs = File.Create(path))
        {
            fs.Write(BitConverter.GetBytes(headerLength));
            fs.SetLength(8 + headerLength); // sparse: costs no disk
        }
        var e = Assert.Throws<SdLoraException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.StartsWith($"{path}: not a valid safetensors file ({problem}", e.Message);
    }

    [Fact]
    public void Metadata_keeps_strings_and_the_raw_text_of_other_values_and_empty_tensors_may_share_an_offset()
    {
        using var tmp = Fixtures.TempDir();
        var path = tmp.File("ok.safetensors");
        File.WriteAllBytes(path, Build("{\"__metadata__\": {\"s\": \"x\", \"n\": 3, \"o\": {\"k\": [1]}}, " +
            "\"e1\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}, \"e2\": {\"dtype\": \"F32\", \"shape\": [0, 2], \"data_offsets\": [0, 0]}, " +
            "\"a\": {\"dtype\": \"I16\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4));
        using var f = SafetensorsFile.Open(path);
        Assert.Equal(new Dictionary<string, string> { ["s"] = "x", ["n"] = "3", ["o"] = "{\"k\": [1]}" }, f.Metadata);
        Assert.Equal(["a", "e1", "e2"], f.Keys.Order(StringComparer.Ordinal));
        using var e2 = f.Load("e2");
        Assert.Equal([0L, 2], e2.shape);
        Assert.Equal($"{path}: has no tensor 'zz'", Assert.Throws<SdLoraException>(() => f.Load("zz")).Message);
    }

    public static TheoryData<string, ScalarType, int> Codes() => new()
    {
        { "F64", ScalarType.Float64, 8 }, { "F32", ScalarType.Float32, 4 }, { "F16", ScalarType.Float16, 2 }, { "BF16", ScalarType.BFloat16, 2 },
        { "I64", ScalarType.Int64, 8 }, { "I32", ScalarType.Int32, 4 }, { "I16", ScalarType.Int16, 2 }, { "I8", ScalarType.Int8, 1 },
        { "U8", ScalarType.Byte, 1 }, { "BOOL", ScalarType.Bool, 1 },
    };

    [Theory]
    [MemberData(nameof(Codes))]
    public void Each_dtype_code_maps_both_ways_and_round_trips_through_a_file(string code, ScalarType type, int bytes)
    {
        Assert.Equal(type, Safetensors.ToScalarType(code));
        Assert.Equal(code, Safetensors.ToCode(type));
        using var tmp = Fixtures.TempDir();
        var path = tmp.File("t.safetensors");
        using var t = torch.ones(3, dtype: type);
        Safetensors.Save(path, [new KeyValuePair<string, Tensor>("t", t)]);
        Assert.Contains($"\"dtype\":\"{code}\"", Encoding.UTF8.GetString(File.ReadAllBytes(path)));
        Assert.Equal(8 + BitConverter.ToInt64(File.ReadAllBytes(path), 0) + 3 * bytes, new FileInfo(path).Length);
        using var f = SafetensorsFile.Open(path);
        using var back = f.Load("t");
        Assert.Equal(type, back.dtype);
        Assert.True(t.equal(back).all().item<bool>());
    }

    [Fact]
    public void Codes_and_types_sdlora_does_not_store_are_refused_in_one_line()
    {
        Assert.Equal("safetensors dtype 'U16' is not supported by sdlora", Assert.Throws<SdLoraException>(() => Safetensors.ToScalarType("U16")).Message);
        Assert.Equal("safetensors dtype 'F8_E5M2' is not supported by sdlora", Assert.Throws<SdLoraException>(() => Safetensors.ToScalarType("F8_E5M2")).Message);
        Assert.Equal("tensors of type ComplexFloat32 cannot be stored in safetensors",
            Assert.Throws<SdLoraException>(() => Safetensors.ToCode(ScalarType.ComplexFloat32)).Message);
    }
}
