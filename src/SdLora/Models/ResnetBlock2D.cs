using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// The residual block of the UNet and the VAE: <c>GN -> SiLU -> conv1 (+ time embedding) -> GN -> SiLU -> conv2</c>,
/// added to the input (through a 1x1 <c>conv_shortcut</c> when the channel count changes).
/// The VAE's blocks have no time embedding (<c>timeEmbedChannels = 0</c>).
/// </summary>
public sealed class ResnetBlock2D : nn.Module<Tensor, Tensor?, Tensor>
{
    public GroupNorm norm1;
    public AdaptableConv2d conv1;
    public AdaptableLinear? time_emb_proj;
    public GroupNorm norm2;
    public AdaptableConv2d conv2;
    public AdaptableConv2d? conv_shortcut;

    public ResnetBlock2D(int inChannels, int outChannels, int timeEmbedChannels, int groups, double eps) : base(nameof(ResnetBlock2D))
    {
        norm1 = Normalization.GroupNorm(groups, inChannels, eps);
        conv1 = new AdaptableConv2d(inChannels, outChannels, 3, padding: 1);
        if (timeEmbedChannels > 0) time_emb_proj = new AdaptableLinear(timeEmbedChannels, outChannels);
        norm2 = Normalization.GroupNorm(groups, outChannels, eps);
        conv2 = new AdaptableConv2d(outChannels, outChannels, 3, padding: 1);
        if (inChannels != outChannels) conv_shortcut = new AdaptableConv2d(inChannels, outChannels, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor? timeEmbedding)
    {
        // Intermediates die with this scope, not with the caller's: a whole forward's worth at 64x64 is gigabytes.
        using var scope = torch.NewDisposeScope();
        // Without autograd nothing needs an intermediate once the next layer has read it: SiLU and the sums work in
        // place and each map is freed as soon as it is consumed, so the block holds about three maps at a time (the
        // VAE decoder at 1024x1024 has 128 x 1024 x 1024 maps, 512 MB each in fp32). The values are the same.
        bool inference = !torch.is_grad_enabled();
        var h = NormActConv(norm1, conv1, x, inference);
        if (time_emb_proj is not null && timeEmbedding is not null)
        {
            var t = time_emb_proj.call(nn.functional.silu(timeEmbedding)).unsqueeze(-1).unsqueeze(-1);
            h = inference ? h.add_(t) : h + t;
        }
        var h2 = NormActConv(norm2, conv2, h, inference);
        if (inference) h.Dispose();
        var shortcut = conv_shortcut is null ? x : conv_shortcut.call(x);
        return (inference ? h2.add_(shortcut) : shortcut + h2).MoveToOuterDisposeScope();
    }

    /// <summary><c>conv(silu(norm(x)))</c>; in inference the SiLU is in place and the normalised map is freed at once.</summary>
    private static Tensor NormActConv(GroupNorm norm, AdaptableConv2d conv, Tensor x, bool inference)
    {
        if (!inference) return conv.call(nn.functional.silu(norm.call(x)));
        var normalized = norm.call(x);
        var activated = nn.functional.silu(normalized, inplace: true);
        var output = conv.call(activated);
        activated.Dispose();
        normalized.Dispose();
        return output;
    }
}

/// <summary>Stride-2 3x3 conv. The UNet pads by 1; the VAE encoder pads only right/bottom by 1 (<c>padding = 0</c>).</summary>
public sealed class Downsample2D : nn.Module<Tensor, Tensor>
{
    public AdaptableConv2d conv;
    private readonly int _padding;

    public Downsample2D(int channels, int padding) : base(nameof(Downsample2D))
    {
        _padding = padding;
        conv = new AdaptableConv2d(channels, channels, 3, stride: 2, padding: padding);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (_padding == 0) return Intermediate.Step(nn.functional.pad(x, [0, 1, 0, 1]), x, conv.call);
        return conv.call(x);
    }
}

/// <summary>Nearest-neighbour 2x upsampling (or to an explicit size) followed by a 3x3 conv.</summary>
public sealed class Upsample2D : nn.Module<Tensor, Tensor>
{
    public AdaptableConv2d conv;

    public Upsample2D(int channels) : base(nameof(Upsample2D))
    {
        conv = new AdaptableConv2d(channels, channels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => Forward(x, null);

    /// <param name="size">Output height/width; when null, twice the input's.</param>
    public Tensor Forward(Tensor x, long[]? size)
    {
        var up = size is null
            ? nn.functional.interpolate(x, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest)
            : nn.functional.interpolate(x, size: size, mode: InterpolationMode.Nearest);
        return Intermediate.Step(up, x, conv.call);
    }
}
