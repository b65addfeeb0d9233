using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>Encoder stage: ResnetBlock2D x layers (no time embedding), then an optional right/bottom-padded downsampler.</summary>
public sealed class DownEncoderBlock2D : nn.Module<Tensor, Tensor>
{
    public ModuleList<ResnetBlock2D> resnets;
    public ModuleList<Downsample2D>? downsamplers;

    public DownEncoderBlock2D(int inChannels, int outChannels, int layers, int groups, bool addDownsample) : base(nameof(DownEncoderBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers).Select(i => new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, 0, groups, AutoencoderKL.NormEps)).ToArray());
        if (addDownsample) downsamplers = new ModuleList<Downsample2D>(new Downsample2D(outChannels, padding: 0));
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        var x = input;
        foreach (var resnet in resnets) x = Intermediate.Step(x, input, h => resnet.call(h, null));
        return downsamplers is null ? x : Intermediate.Step(x, input, downsamplers[0].call);
    }
}

/// <summary>Decoder stage: ResnetBlock2D x (layers+1), then an optional 2x upsampler.</summary>
public sealed class UpDecoderBlock2D : nn.Module<Tensor, Tensor>
{
    public ModuleList<ResnetBlock2D> resnets;
    public ModuleList<Upsample2D>? upsamplers;

    public UpDecoderBlock2D(int inChannels, int outChannels, int layers, int groups, bool addUpsample) : base(nameof(UpDecoderBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers).Select(i => new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, 0, groups, AutoencoderKL.NormEps)).ToArray());
        if (addUpsample) upsamplers = new ModuleList<Upsample2D>(new Upsample2D(outChannels));
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        var x = input;
        foreach (var resnet in resnets) x = Intermediate.Step(x, input, h => resnet.call(h, null));
        return upsamplers is null ? x : Intermediate.Step(x, input, upsamplers[0].call);
    }
}

/// <summary>The VAE bottleneck: ResnetBlock2D -> single-head spatial self-attention -> ResnetBlock2D.</summary>
public sealed class UNetMidBlock2D : nn.Module<Tensor, Tensor>
{
    public ModuleList<VaeAttention> attentions;
    public ModuleList<ResnetBlock2D> resnets;

    public UNetMidBlock2D(int channels, int groups) : base(nameof(UNetMidBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>(new ResnetBlock2D(channels, channels, 0, groups, AutoencoderKL.NormEps), new ResnetBlock2D(channels, channels, 0, groups, AutoencoderKL.NormEps));
        attentions = new ModuleList<VaeAttention>(new VaeAttention(channels, groups));
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        var x = resnets[0].call(input, null);
        x = Intermediate.Step(x, input, attentions[0].call);
        return Intermediate.Step(x, input, h => resnets[1].call(h, null));
    }
}

/// <summary>
/// Single-head self-attention over all pixels with its own GroupNorm (<c>group_norm</c>) and linear
/// <c>to_q/to_k/to_v/to_out.0</c> with biases (diffusers' names), added to the input.
/// </summary>
public sealed class VaeAttention : nn.Module<Tensor, Tensor>
{
    public GroupNorm group_norm;
    public AdaptableLinear to_q;
    public AdaptableLinear to_k;
    public AdaptableLinear to_v;
    public ModuleList<AdaptableLinear> to_out;

    public VaeAttention(int channels, int groups) : base(nameof(VaeAttention))
    {
        group_norm = Normalization.GroupNorm(groups, channels, AutoencoderKL.NormEps);
        to_q = new AdaptableLinear(channels, channels);
        to_k = new AdaptableLinear(channels, channels);
        to_v = new AdaptableLinear(channels, channels);
        to_out = new ModuleList<AdaptableLinear>(new AdaptableLinear(channels, channels));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
        var hs = group_norm.call(x).view(b, c, h * w).transpose(1, 2);
        var o = ScaledDotProduct.MultiHead(to_q.call(hs), to_k.call(hs), to_v.call(hs), heads: 1);
        o = to_out[0].call(o).transpose(1, 2).reshape(b, c, h, w);
        return (o + x).MoveToOuterDisposeScope();
    }
}

/// <summary>Image -> 2 x latent channels (mean and log-variance, before <c>quant_conv</c>).</summary>
public sealed class VaeEncoder : nn.Module<Tensor, Tensor>
{
    public AdaptableConv2d conv_in;
    public ModuleList<DownEncoderBlock2D> down_blocks;
    public UNetMidBlock2D mid_block;
    public GroupNorm conv_norm_out;
    public AdaptableConv2d conv_out;

    public VaeEncoder(AutoencoderKLConfig config) : base(nameof(VaeEncoder))
    {
        var ch = config.Channels;
        conv_in = new AdaptableConv2d(config.InChannels, ch[0], 3, padding: 1);
        int output = ch[0];
        var blocks = new List<DownEncoderBlock2D>();
        for (int i = 0; i < ch.Length; i++)
        {
            int input = output;
            output = ch[i];
            blocks.Add(new DownEncoderBlock2D(input, output, config.LayersPerBlock, config.NormNumGroups, i < ch.Length - 1));
        }
        down_blocks = new ModuleList<DownEncoderBlock2D>(blocks.ToArray());
        mid_block = new UNetMidBlock2D(ch[^1], config.NormNumGroups);
        conv_norm_out = Normalization.GroupNorm(config.NormNumGroups, ch[^1], AutoencoderKL.NormEps);
        conv_out = new AdaptableConv2d(ch[^1], 2 * config.LatentChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor image)
    {
        var x = conv_in.call(image);
        foreach (var block in down_blocks) x = Intermediate.Step(x, image, block.call);
        x = Intermediate.Step(x, image, mid_block.call);
        x = Intermediate.Step(x, image, conv_norm_out.call);
        return Intermediate.Step(x, image, h => conv_out.call(Intermediate.Silu(h)));
    }
}

/// <summary>Latents -> image in [-1, 1] (not clamped).</summary>
public sealed class VaeDecoder : nn.Module<Tensor, Tensor>
{
    public AdaptableConv2d conv_in;
    public UNetMidBlock2D mid_block;
    public ModuleList<UpDecoderBlock2D> up_blocks;
    public GroupNorm conv_norm_out;
    public AdaptableConv2d conv_out;

    public VaeDecoder(AutoencoderKLConfig config) : base(nameof(VaeDecoder))
    {
        var reversed = config.Channels.Reverse().ToArray();
        conv_in = new AdaptableConv2d(config.LatentChannels, reversed[0], 3, padding: 1);
        mid_block = new UNetMidBlock2D(reversed[0], config.NormNumGroups);
        int output = reversed[0];
        var blocks = new List<UpDecoderBlock2D>();
        for (int i = 0; i < reversed.Length; i++)
        {
            int prev = output;
            output = reversed[i];
            blocks.Add(new UpDecoderBlock2D(prev, output, config.LayersPerBlock + 1, config.NormNumGroups, i < reversed.Length - 1));
        }
        up_blocks = new ModuleList<UpDecoderBlock2D>(blocks.ToArray());
        conv_norm_out = Normalization.GroupNorm(config.NormNumGroups, reversed[^1], AutoencoderKL.NormEps);
        conv_out = new AdaptableConv2d(reversed[^1], config.OutChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor latents)
    {
        var x = conv_in.call(latents);
        x = Intermediate.Step(x, latents, mid_block.call);
        foreach (var block in up_blocks) x = Intermediate.Step(x, latents, block.call);
        x = Intermediate.Step(x, latents, conv_norm_out.call);
        return Intermediate.Step(x, latents, h => conv_out.call(Intermediate.Silu(h)));
    }
}

/// <summary>
/// Frees activations a forward pass has finished with, when no autograd graph needs them: at 1024x1024 each VAE map is
/// hundreds of megabytes, and a chain of blocks would otherwise keep every one alive until the caller's scope ends.
/// </summary>
internal static class Intermediate
{
    /// <summary><c>next(x)</c>; without autograd, <paramref name="x"/> is then freed unless it is the caller's <paramref name="input"/>.</summary>
    public static Tensor Step(Tensor x, Tensor input, Func<Tensor, Tensor> next)
    {
        var y = next(x);
        if (!torch.is_grad_enabled() && !ReferenceEquals(x, input) && !ReferenceEquals(x, y)) x.Dispose();
        return y;
    }

    /// <summary>SiLU, in place when no autograd graph needs its input.</summary>
    public static Tensor Silu(Tensor x) => torch.is_grad_enabled() ? nn.functional.silu(x) : nn.functional.silu(x, inplace: true);
}
