using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace SdLora.IO;

/// <summary>
/// Converts raw tensor bytes between the float formats checkpoints store (fp32, fp16, bf16), rounding as torch's
/// <c>Tensor.to</c> does (to nearest, ties to even; NaN stays NaN), so a loader can write a file's fp16 straight into a
/// bf16 or fp32 parameter: no staging tensor of the file's dtype, which cost a third of a load in allocation and copies.
/// </summary>
public static class FloatFormats
{
    /// <summary>Whether <see cref="Convert"/> handles this pair (every pair of fp32, fp16 and bf16).</summary>
    public static bool CanConvert(ScalarType from, ScalarType to) => IsFloat(from) && IsFloat(to);

    private static bool IsFloat(ScalarType t) => t is ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16;

    private static int SizeOf(ScalarType t) => t == ScalarType.Float32 ? 4 : 2;

    /// <summary>Converts <paramref name="source"/> (elements of <paramref name="from"/>) into <paramref name="target"/> (elements of <paramref name="to"/>); both hold the same number of elements.</summary>
    public static void Convert(ReadOnlySpan<byte> source, ScalarType from, Span<byte> target, ScalarType to)
    {
        if (!CanConvert(from, to)) throw new ArgumentException($"no conversion from {from} to {to}");
        if (source.Length % SizeOf(from) != 0 || source.Length / SizeOf(from) != target.Length / SizeOf(to) || target.Length % SizeOf(to) != 0)
            throw new ArgumentException($"{source.Length} bytes of {from} do not fill {target.Length} bytes of {to}");
        if (from == to)
        {
            source.CopyTo(target);
            return;
        }
        switch (from, to)
        {
            case (ScalarType.Float16, ScalarType.Float32):
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(source), MemoryMarshal.Cast<byte, float>(target));
                return;
            case (ScalarType.Float32, ScalarType.Float16):
                TensorPrimitives.ConvertToHalf(MemoryMarshal.Cast<byte, float>(source), MemoryMarshal.Cast<byte, Half>(target));
                return;
            case (ScalarType.BFloat16, ScalarType.Float32):
                WidenBFloat16(MemoryMarshal.Cast<byte, ushort>(source), MemoryMarshal.Cast<byte, uint>(target));
                return;
            case (ScalarType.Float32, ScalarType.BFloat16):
                NarrowToBFloat16(MemoryMarshal.Cast<byte, uint>(source), MemoryMarshal.Cast<byte, ushort>(target));
                return;
        }
        // fp16 <-> bf16: through fp32 in blocks small enough for the stack, as torch converts (exactly to fp32, then rounded).
        Span<float> block = stackalloc float[4096];
        int n = source.Length / 2;
        for (int i = 0; i < n; i += block.Length)
        {
            int count = Math.Min(block.Length, n - i);
            var part = block[..count];
            Convert(source.Slice(i * 2, count * 2), from, MemoryMarshal.AsBytes(part), ScalarType.Float32);
            Convert(MemoryMarshal.AsBytes(part), ScalarType.Float32, target.Slice(i * 2, count * 2), to);
        }
    }

    /// <summary>bf16 is the top half of an fp32: widening is a shift.</summary>
    private static void WidenBFloat16(ReadOnlySpan<ushort> source, Span<uint> target)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var vs = MemoryMarshal.Cast<ushort, Vector<ushort>>(source);
            for (int v = 0; v < vs.Length; v++)
            {
                Vector.Widen(vs[v], out var low, out var high);
                int at = v * Vector<ushort>.Count;
                (low << 16).CopyTo(target.Slice(at));
                (high << 16).CopyTo(target.Slice(at + Vector<uint>.Count));
            }
            i = vs.Length * Vector<ushort>.Count;
        }
        for (; i < source.Length; i++) target[i] = (uint)source[i] << 16;
    }

    /// <summary>Rounds fp32 to bf16 to nearest, ties to even; every NaN becomes the quiet NaN 0x7FC0, as torch's does.</summary>
    private static void NarrowToBFloat16(ReadOnlySpan<uint> source, Span<ushort> target)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var one = Vector<uint>.One;
            var bias = new Vector<uint>(0x7FFF);
            var magnitude = new Vector<uint>(0x7FFFFFFF);
            var infinity = new Vector<uint>(0x7F800000);
            var nan = new Vector<uint>(0x7FC0);
            int lanes = Vector<uint>.Count;
            for (; i + 2 * lanes <= source.Length; i += 2 * lanes)
            {
                var a = Round(new Vector<uint>(source.Slice(i)));
                var b = Round(new Vector<uint>(source.Slice(i + lanes)));
                Vector.Narrow(a, b).CopyTo(target.Slice(i));
            }

            Vector<uint> Round(Vector<uint> u)
            {
                var rounded = (u + bias + ((u >> 16) & one)) >> 16;
                return Vector.ConditionalSelect(Vector.GreaterThan(u & magnitude, infinity), nan, rounded);
            }
        }
        for (; i < source.Length; i++) target[i] = NarrowOne(source[i]);
    }

    private static ushort NarrowOne(uint u) =>
        (u & 0x7FFFFFFF) > 0x7F800000 ? (ushort)0x7FC0 : (ushort)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
