using System.Runtime.InteropServices;
using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.IO;

/// <summary>
/// <see cref="FloatFormats"/> must give the very bits torch's <c>Tensor.to</c> gives, or a model loaded without the staging
/// tensor would differ from one loaded through torch: checked on every fp16 and bf16 bit pattern and on fp32 values
/// chosen to hit the rounding cases (ties, carries into the exponent, overflow to infinity, subnormals, NaN).
/// </summary>
public sealed class FloatFormatsTests
{
    private static readonly ScalarType[] Formats = [ScalarType.Float32, ScalarType.Float16, ScalarType.BFloat16];

    private static byte[] AllSixteenBitPatterns()
    {
        var bits = new ushort[65536];
        for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
        return MemoryMarshal.AsBytes(bits.AsSpan()).ToArray();
    }

    /// <summary>fp32 values around every rounding boundary of both 16-bit formats, plus random ones.</summary>
    private static byte[] HardFloat32Values()
    {
        var values = new List<uint>();
        var random = new Random(20261201);
        for (int i = 0; i < 20000; i++) values.Add((uint)random.NextInt64(0, 1L << 32));
        foreach (uint top in new uint[] { 0x0000, 0x0001, 0x007F, 0x0080, 0x3F80, 0x3F81, 0x4049, 0x477F, 0x7F7F, 0x7F80, 0x7FC0, 0x8000, 0x8001, 0xBF80, 0xFF7F, 0xFF80 })
            foreach (uint low in new uint[] { 0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF })
                values.Add(top << 16 | low);
        // fp16 boundaries: exact halves, the ties between two halves, the largest finite half and just past it, subnormals.
        foreach (float f in new[] { 65504f, 65519.99f, 65520f, 65536f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f, 2.9802326e-08f, 1.0009765625f, 1.00048828125f, 1.00146484375f })
        {
            values.Add(BitConverter.SingleToUInt32Bits(f));
            values.Add(BitConverter.SingleToUInt32Bits(-f));
        }
        values.Add(0x7FA00001); // a signalling NaN with a payload
        values.Add(0xFFC12345);
        return MemoryMarshal.AsBytes(values.ToArray().AsSpan()).ToArray();
    }

    private static Tensor FromBytes(byte[] bytes, ScalarType dtype)
    {
        var t = torch.empty(bytes.Length / (dtype == ScalarType.Float32 ? 4 : 2), dtype);
        bytes.CopyTo(t.bytes);
        return t;
    }

    private static void AssertSameAsTorch(byte[] source, ScalarType from, ScalarType to)
    {
        using var scope = torch.NewDisposeScope();
        var expected = FromBytes(source, from).to(to);
        var actual = new byte[expected.NumberOfElements * expected.ElementSize];
        FloatFormats.Convert(source, from, actual, to);
        var got = FromBytes(actual, to);
        // NaNs only need to stay NaN (torch keeps fp16 payloads, bf16 makes one quiet NaN); every other value bit for bit.
        var nan = expected.isnan();
        Assert.True(got.isnan().eq(nan).all().item<bool>(), $"{from} -> {to}: NaN where torch has none, or the reverse");
        var expectedBytes = expected.masked_fill(nan, 0).bytes.ToArray();
        var gotBytes = got.masked_fill(nan, 0).bytes.ToArray();
        int size = (int)expected.ElementSize, differ = 0, first = -1;
        for (int i = 0; i < expectedBytes.Length; i += size)
            if (!expectedBytes.AsSpan(i, size).SequenceEqual(gotBytes.AsSpan(i, size)) && differ++ == 0) first = i / size;
        Assert.True(differ == 0, $"{from} -> {to}: {differ} values differ from torch's rounding, first at element {first}");
    }

    [Theory]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    public void Every_sixteen_bit_value_converts_as_torch_converts_it(ScalarType from)
    {
        var source = AllSixteenBitPatterns();
        foreach (var to in Formats) AssertSameAsTorch(source, from, to);
    }

    [Fact]
    public void Float32_rounds_to_the_sixteen_bit_formats_as_torch_does()
    {
        var source = HardFloat32Values();
        foreach (var to in Formats) AssertSameAsTorch(source, ScalarType.Float32, to);
    }

    [Fact]
    public void Lengths_that_do_not_match_are_refused()
    {
        Assert.Throws<ArgumentException>(() => FloatFormats.Convert(new byte[8], ScalarType.Float16, new byte[4], ScalarType.Float32));
        Assert.Throws<ArgumentException>(() => FloatFormats.Convert(new byte[3], ScalarType.Float16, new byte[6], ScalarType.Float32));
        Assert.Throws<ArgumentException>(() => FloatFormats.Convert(new byte[8], ScalarType.Int32, new byte[8], ScalarType.Float32));
        Assert.False(FloatFormats.CanConvert(ScalarType.Float64, ScalarType.Float32));
        Assert.True(FloatFormats.CanConvert(ScalarType.BFloat16, ScalarType.Float16));
    }

    [Theory]
    [InlineData(ScalarType.Float16, ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16, ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16, ScalarType.Float32)]
    [InlineData(ScalarType.Float32, ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32, ScalarType.Float16)]
    [InlineData(ScalarType.Float64, ScalarType.Float32)]
    public void A_safetensors_file_loads_into_a_parameter_of_another_dtype_as_torch_would_convert_it(ScalarType stored, ScalarType into)
    {
        using var dir = Fixtures.TempDir();
        using var scope = torch.NewDisposeScope();
        // 5 x 13 elements: not a multiple of any vector width, so the scalar tail is exercised too.
        var values = torch.randn(5, 13, generator: new torch.Generator(7)).mul(300).to(stored);
        var path = dir.File("w.safetensors");
        Safetensors.Save(path, new Dictionary<string, Tensor> { ["w"] = values });
        using var file = Safetensors.Open(path);
        var target = torch.empty(5, 13, into);
        file.CopyInto("w", target);
        Assert.True(target.eq(values.to(into)).all().item<bool>());
        var strided = torch.empty(13, 5, into).t();
        file.CopyInto("w", strided);
        Assert.True(strided.eq(values.to(into)).all().item<bool>());
    }

    [Fact]
    public void Layers_built_for_loading_allocate_their_weights_in_the_load_dtype()
    {
        var linear = ModuleInitialization.WithoutRandomInit(() => new AdaptableLinear(4, 3), ScalarType.BFloat16);
        var conv = ModuleInitialization.WithoutRandomInit(() => new AdaptableConv2d(2, 3, 3), ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, linear.weight.dtype);
        Assert.Equal(ScalarType.BFloat16, linear.bias!.dtype);
        Assert.Equal(ScalarType.BFloat16, conv.weight.dtype);
        Assert.Equal(ScalarType.BFloat16, conv.bias!.dtype);
        // Outside the scope, and in a scope that names no dtype, weights are fp32 as before.
        Assert.Equal(ScalarType.Float32, new AdaptableLinear(4, 3).weight.dtype);
        Assert.Equal(ScalarType.Float32, ModuleInitialization.WithoutRandomInit(() => new AdaptableLinear(4, 3)).weight.dtype);
        Assert.Equal(ScalarType.Float32, ModuleInitialization.WeightDType);
    }
}
