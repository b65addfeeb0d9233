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
/// libtorch's oneDNN convolution on the CPU (libtorch 2.10) lays channels out in blocks of 16, and when a count is not
/// a multiple of 16 the padding of the last block can leak into the results. Measured on an AMD EPYC (AVX-512,
/// AVX512-BF16, no AMX):
/// <list type="bullet">
/// <item>output channels off the block, bf16: a 3x3 convolution's output was wrong by a quarter of its size (320→4,
/// SD's <c>conv_out</c>: max error 23 % of max |output| against fp32, where bf16 rounding gives 0.3 %), so native
/// bf16 images came out wrong; fp32 and bf16: the gradient for the input was wrong by 35-61 % of its max, or NaN
/// (SD's <c>conv_out</c>; 32→8, like a rank-8 LoCon's down layer), which ruins every training step;</item>
/// <item>more than 16 input channels off the block (17, 24, 40), fp32: every 3x3 output was wrong, and in a third
/// to two thirds of the passes NaN (the toy tests' small UNet concatenates 8 and 16 channels);</item>
/// <item>stride 2 with an odd number of blocks of input channels (48, 80, 112), fp32: the input gradient was wrong.</item>
/// </list>
/// So on the CPU such a weight (and input) is padded with zero channels to a multiple of 16 and the extra output
/// channels are dropped again: the same numbers, at the cost of a few more channels in the layers concerned (in
/// SD1.x only <c>conv_out</c>, 4 channels, and LoCon down layers). Other devices take the plain call.
/// </para>
/// </summary>
public static class Convolutions
{
    private const long ChannelBlock = 16;

    public static Tensor Conv2d(Tensor input, Tensor weight, Tensor? bias, long stride, long padding)
    {
        long outChannels = weight.shape[0], inChannels = weight.shape[1];
        long extraOut = PaddingTo(outChannels, ChannelBlock);
        // Fewer than 16 input channels (an image's 3, a latent's 4) take another kernel, which is right; a strided
        // convolution's input gradient needs pairs of blocks.
        long extraIn = inChannels <= ChannelBlock ? 0 : PaddingTo(inChannels, stride > 1 ? 2 * ChannelBlock : ChannelBlock);
        if ((extraOut == 0 && extraIn == 0) || input.device_type != DeviceType.CPU)
            return nn.functional.conv2d(input, weight, bias, strides: [stride, stride], padding: [padding, padding]);

        if (extraIn > 0)
        {
            input = nn.functional.pad(input, [0, 0, 0, 0, 0, extraIn]);
            weight = nn.functional.pad(weight, [0, 0, 0, 0, 0, extraIn]);
        }
        if (extraOut > 0)
        {
            weight = nn.functional.pad(weight, [0, 0, 0, 0, 0, 0, 0, extraOut]);
            if (bias is not null) bias = nn.functional.pad(bias, [0, extraOut]);
        }
        var output = nn.functional.conv2d(input, weight, bias, strides: [stride, stride], padding: [padding, padding]);
        return extraOut > 0 ? output.narrow(1, 0, outChannels) : output;
    }

    private static long PaddingTo(long channels, long block) => (channels + block - 1) / block * block - channels;
}

/// <summary>
/// Group normalisation layers as the models build them: <c>torch.nn.GroupNorm</c> with its affine weight 1 and bias 0.
/// <para>
/// TorchSharp 0.107's <c>nn.GroupNorm</c> allocates its weight and bias without setting them (LayerNorm and BatchNorm
/// do set theirs): a model built from scratch started with whatever the allocator held, zeros on a fresh heap
/// (every group norm then outputs 0) and 1e36 or NaN on a reused one, so the toy build failed now and then with "the
/// UNet loss became NaN" in its first steps. Loaded models are unaffected (their norms are read from the file), and
/// inside <see cref="ModuleInitialization.WithoutRandomInit{T}"/> nothing is set, as for every other layer.
/// </para>
/// </summary>
public static class Normalization
{
    public static GroupNorm GroupNorm(int groups, long channels, double eps)
    {
        var norm = nn.GroupNorm(groups, channels, eps);
        if (!ModuleInitialization.IsSkipped)
        {
            using var noGrad = torch.no_grad();
            norm.weight?.fill_(1.0);
            norm.bias?.zero_();
        }
        return norm;
    }
}
