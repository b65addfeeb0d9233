using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>Where a sampler's N(0,1) draws come from.</summary>
public interface INoiseSource
{
    Tensor Next(long[] shape, ScalarType dtype, Device device);
}

/// <summary>
/// A seeded torch generator. Draws in float32 on the CPU and then moves, so one seed gives the same
/// noise (and image) on every device and in every compute dtype.
/// </summary>
public sealed class SeededNoise : INoiseSource, IDisposable
{
    private readonly torch.Generator _generator;
    public long Seed { get; }

    public SeededNoise(long seed)
    {
        Seed = seed;
        _generator = new torch.Generator(unchecked((ulong)seed), CPU);
    }

    public Tensor Next(long[] shape, ScalarType dtype, Device device)
    {
        var cpu = torch.randn(shape, ScalarType.Float32, CPU, generator: _generator);
        if (dtype == ScalarType.Float32 && device.type == DeviceType.CPU) return cpu;
        using (cpu) return cpu.to(dtype, device);
    }

    public void Dispose() => _generator.Dispose();
}

/// <summary>A fixed list of noise tensors handed out in order (tests feed recorded reference draws).</summary>
public sealed class FixedNoise : INoiseSource
{
    private readonly IReadOnlyList<Tensor> _draws;
    public int Used { get; private set; }

    public FixedNoise(IReadOnlyList<Tensor> draws) => _draws = draws;

    /// <summary>Splits a stacked [k, ...] tensor into its k draws.</summary>
    public FixedNoise(Tensor stacked) : this(stacked.unbind(0)) { }

    public Tensor Next(long[] shape, ScalarType dtype, Device device)
    {
        if (Used >= _draws.Count) throw new InvalidOperationException($"FixedNoise: all {_draws.Count} draws used");
        var draw = _draws[Used++];
        if (!draw.shape.SequenceEqual(shape))
            throw new InvalidOperationException($"FixedNoise: draw {Used - 1} is [{string.Join(",", draw.shape)}], asked for [{string.Join(",", shape)}]");
        return draw.to(dtype, device).clone();
    }
}
