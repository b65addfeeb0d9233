using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// Something added to a layer's output without touching its weights: a LoRA, a LoCon, ...
/// <see cref="Forward"/> receives the layer's input and returns the term to add to its output.
/// </summary>
public interface ILayerAdapter
{
    Tensor Forward(Tensor input);
}

/// <summary>
/// A Linear layer that adapters can attach to. The models use it for every projection a LoRA may
/// target, so LoRA networks hook in by name without replacing modules or changing the base weights.
/// Registered names are <c>weight</c> and <c>bias</c>, as in torch.nn.Linear.
/// </summary>
public sealed class AdaptableLinear : nn.Module<Tensor, Tensor>, ICpuLowPrecisionLayer
{
    public Parameter weight;
    public Parameter? bias;
    private readonly List<ILayerAdapter> _adapters = [];

    public long InFeatures { get; }
    public long OutFeatures { get; }
    public IReadOnlyList<ILayerAdapter> Adapters => _adapters;
    /// <summary>How this layer computes in bf16/fp16 on the CPU; set for a whole model by <see cref="CpuPrecision.Apply"/>.</summary>
    public CpuLowPrecision CpuLowPrecision { get; set; } = CpuLowPrecision.Upcast;

    public AdaptableLinear(long inFeatures, long outFeatures, bool hasBias = true) : base(nameof(AdaptableLinear))
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        bool initialize = !ModuleInitialization.IsSkipped;
        var dtype = ModuleInitialization.WeightDType;
        weight = new Parameter(torch.empty(outFeatures, inFeatures, dtype: dtype));
        if (initialize) nn.init.kaiming_uniform_(weight, Math.Sqrt(5));
        if (hasBias)
        {
            double bound = 1.0 / Math.Sqrt(inFeatures);
            bias = new Parameter(initialize ? torch.empty(outFeatures).uniform_(-bound, bound) : torch.empty(outFeatures, dtype: dtype));
        }
        RegisterComponents();
    }

    public void AddAdapter(ILayerAdapter adapter) => _adapters.Add(adapter);
    public bool RemoveAdapter(ILayerAdapter adapter) => _adapters.Remove(adapter);
    /// <summary>Removes every adapter; returns how many there were.</summary>
    public int ClearAdapters()
    {
        int n = _adapters.Count;
        _adapters.Clear();
        return n;
    }

    public override Tensor forward(Tensor input)
    {
        var y = CpuPrecision.ShouldUpcast(input, CpuLowPrecision)
            ? nn.functional.linear(input.to(ScalarType.Float32), weight.to(ScalarType.Float32), bias?.to(ScalarType.Float32)).to(input.dtype)
            : nn.functional.linear(input, weight, bias);
        foreach (var a in _adapters) y = y + a.Forward(input);
        return y;
    }
}

/// <summary>A Conv2d layer that adapters can attach to (see <see cref="AdaptableLinear"/>). Registered names <c>weight</c>, <c>bias</c>.</summary>
public sealed class AdaptableConv2d : nn.Module<Tensor, Tensor>, ICpuLowPrecisionLayer
{
    public Parameter weight;
    public Parameter? bias;
    private readonly List<ILayerAdapter> _adapters = [];

    public long InChannels { get; }
    public long OutChannels { get; }
    public int KernelSize { get; }
    public int Stride { get; }
    public int Padding { get; }
    public IReadOnlyList<ILayerAdapter> Adapters => _adapters;
    /// <summary>How this layer computes in bf16/fp16 on the CPU; set for a whole model by <see cref="CpuPrecision.Apply"/>.</summary>
    public CpuLowPrecision CpuLowPrecision { get; set; } = CpuLowPrecision.Upcast;

    public AdaptableConv2d(long inChannels, long outChannels, int kernelSize, int stride = 1, int padding = 0, bool hasBias = true) : base(nameof(AdaptableConv2d))
    {
        InChannels = inChannels;
        OutChannels = outChannels;
        KernelSize = kernelSize;
        Stride = stride;
        Padding = padding;
        bool initialize = !ModuleInitialization.IsSkipped;
        var dtype = ModuleInitialization.WeightDType;
        weight = new Parameter(torch.empty([outChannels, inChannels, kernelSize, kernelSize], dtype: dtype));
        if (initialize) nn.init.kaiming_uniform_(weight, Math.Sqrt(5));
        if (hasBias)
        {
            double bound = 1.0 / Math.Sqrt(inChannels * kernelSize * kernelSize);
            bias = new Parameter(initialize ? torch.empty(outChannels).uniform_(-bound, bound) : torch.empty(outChannels, dtype: dtype));
        }
        RegisterComponents();
    }

    public void AddAdapter(ILayerAdapter adapter) => _adapters.Add(adapter);
    public bool RemoveAdapter(ILayerAdapter adapter) => _adapters.Remove(adapter);
    /// <summary>Removes every adapter; returns how many there were.</summary>
    public int ClearAdapters()
    {
        int n = _adapters.Count;
        _adapters.Clear();
        return n;
    }

    public override Tensor forward(Tensor input)
    {
        var y = CpuPrecision.ShouldUpcast(input, CpuLowPrecision)
            ? Convolutions.Conv2d(input.to(ScalarType.Float32), weight.to(ScalarType.Float32), bias?.to(ScalarType.Float32), Stride, Padding).to(input.dtype)
            : Convolutions.Conv2d(input, weight, bias, Stride, Padding);
        foreach (var a in _adapters) y = y + a.Forward(input);
        return y;
    }
}

/// <summary>
/// 2-D convolution as the models and adapters compute it: <c>torch.nn.functional.conv2d</c>, except where libtorch's
/// CPU kernel gets it wrong.
/// <para>
/// libtorch's oneDNN convolution on the CPU (libtorch 2.10) lays output channels out in blocks of 16, and when their
/// count is not a multiple of 16 the padding of the last block leaks into the results:
/// <list type="bullet">
/// <item>bf16, AVX512-BF16 without AMX (AMD Zen 4): a 3x3 convolution's output is wrong by a quarter of its size
/// (measured 320→4, SD's <c>conv_out</c>: max error 23 % of max |output| against fp32, where bf16 rounding gives
/// 0.3 %), so native bf16 images come out wrong;</item>
/// <item>fp32 and bf16, AVX-512 and AVX2: now and then the gradient for the input is NaN or infinite (320→4 at 64²:
/// 20 of 200 backward passes; 32→8, like a rank-8 LoCon's down layer: 76 of 200), which ruins a training step.</item>
/// </list>
/// So on the CPU such a weight is padded with zero filters to a multiple of 16 and the extra output channels are
/// dropped again: the same numbers (the extra filters only ever see zeros), at the cost of a few more filters in
/// the model's smallest layers. Multiples of 16 and other devices take the plain call.
/// </para>
/// </summary>
public static class Convolutions
{
    private const long ChannelBlock = 16;

    public static Tensor Conv2d(Tensor input, Tensor weight, Tensor? bias, long stride, long padding)
    {
        long outChannels = weight.shape[0];
        if (outChannels % ChannelBlock == 0 || input.device_type != DeviceType.CPU)
            return nn.functional.conv2d(input, weight, bias, strides: [stride, stride], padding: [padding, padding]);

        long extra = (outChannels + ChannelBlock - 1) / ChannelBlock * ChannelBlock - outChannels;
        var paddedWeight = nn.functional.pad(weight, [0, 0, 0, 0, 0, 0, 0, extra]);
        var paddedBias = bias is null ? null : nn.functional.pad(bias, [0, extra]);
        return nn.functional.conv2d(input, paddedWeight, paddedBias, strides: [stride, stride], padding: [padding, padding])
            .narrow(1, 0, outChannels);
    }
}
