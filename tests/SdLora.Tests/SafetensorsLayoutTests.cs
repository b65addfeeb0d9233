using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests;

/// <summary>The safetensors layout checked byte by byte against the format's definition, not through our own reader.</summary>
public class SafetensorsLayoutTests
{
    private static (JsonElement Header, long DataStart, byte[] File) Parse(string path)
    {
        var bytes = File.ReadAllBytes(path);
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n)).RootElement.Clone();
        return (header, 8 + n, bytes);
    }

    [Fact]
    public void Written_file_has_the_documented_header_offsets_and_little_endian_data()
    {
        using var tmp = Fixtures.TempDir();
        var path = tmp.File("x.safetensors");
        var tensors = new Dictionary<string, Tensor>
        {
            ["a"] = torch.tensor(new float[] { 1.5f, -2f, 3.25f }),
            ["b"] = torch.tensor(new long[] { 1, -1, 1L << 40 }).reshape(3, 1),
            ["c"] = torch.tensor(new float[] { 0.5f, -65504f }).to(ScalarType.Float16),
            ["d"] = torch.tensor(new float[] { 1f / 3 }).to(ScalarType.BFloat16),
            ["e"] = torch.tensor(new byte[] { 0, 255, 7 }),
        };
        Safetensors.Save(path, tensors, new Dictionary<string, string> { ["k"] = "v" });
        var (header, dataStart, file) = Parse(path);

        Assert.Equal("v", header.GetProperty("__metadata__").GetProperty("k").GetString());
        var expected = new Dictionary<string, (string DType, long[] Shape, byte[] Bytes)>
        {
            ["a"] = ("F32", [3], [.. BitConverter.GetBytes(1.5f), .. BitConverter.GetBytes(-2f), .. BitConverter.GetBytes(3.25f)]),
            ["b"] = ("I64", [3, 1], [.. BitConverter.GetBytes(1L), .. BitConverter.GetBytes(-1L), .. BitConverter.GetBytes(1L << 40)]),
            ["c"] = ("F16", [2], [.. BitConverter.GetBytes((Half)0.5f), .. BitConverter.GetBytes((Half)(-65504f))]),
            ["d"] = ("BF16", [1], [0xAB, 0x3E]), // 1/3 rounded to bf16 = 0x3EAB (round to nearest even)
            ["e"] = ("U8", [3], [0, 255, 7]),
        };
        var spans = new List<(long Begin, long End)>();
        foreach (var (name, (dtype, shape, data)) in expected)
        {
            var e = header.GetProperty(name);
            Assert.Equal(dtype, e.GetProperty("dtype").GetString());
            Assert.Equal(shape, e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray());
            var offsets = e.GetProperty("data_offsets").EnumerateArray().Select(x => x.GetInt64()).ToArray();
            Assert.Equal(data, file[(int)(dataStart + offsets[0])..(int)(dataStart + offsets[1])]);
            spans.Add((offsets[0], offsets[1]));
        }
        // The data section is exactly the tensors, back to back, with nothing before, between or after them.
        spans.Sort();
        Assert.Equal(0, spans[0].Begin);
        for (int i = 1; i < spans.Count; i++) Assert.Equal(spans[i - 1].End, spans[i].Begin);
        Assert.Equal(file.Length - dataStart, spans[^1].End);
        Assert.Equal(0, dataStart % 8); // header padded so the data starts 8-byte aligned, as the reference writer does
    }

    [Fact]
    public void Fp16_weights_of_the_golden_model_load_as_their_exact_values()
    {
        const string name = "conv_in.weight";
        var path = Fixtures.CopiedSet("tiny-sd15/unet/diffusion_pytorch_model.safetensors");
        var (header, dataStart, file) = Parse(path);
        var e = header.GetProperty(name);
        Assert.Equal("F16", e.GetProperty("dtype").GetString());
        var offsets = e.GetProperty("data_offsets").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        var raw = file.AsSpan((int)(dataStart + offsets[0]), (int)(offsets[1] - offsets[0]));
        var expected = new float[raw.Length / 2];
        for (int i = 0; i < expected.Length; i++) expected[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(raw[(2 * i)..]);

        using var f = SafetensorsFile.Open(path);
        using var t = f.Load(name, ScalarType.Float32);
        Assert.Equal(e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray(), t.shape);
        Assert.Equal(expected, t.flatten().data<float>().ToArray());
    }
}
