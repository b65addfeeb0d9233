using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// What the UNet's blocks share: residual blocks and transformers run plainly, or through
/// <see cref="GradientCheckpoint"/> when the model asks for it.
/// </summary>
public abstract class UNetBlock : nn.Module
{
    protected UNetBlock(string name) : base(name) { }

    protected static Tensor RunResnet(ResnetBlock2D resnet, Tensor x, Tensor temb, bool checkpoint) =>
        checkpoint ? GradientCheckpoint.Run(t => resnet.call(t[0], t[1]), x, temb) : resnet.call(x, temb);

    protected static Tensor RunTransformer(Transformer2DModel attention, Tensor x, Tensor context, bool checkpoint) =>
        checkpoint ? GradientCheckpoint.Run(t => attention.call(t[0], t[1]), x, context) : attention.call(x, context);

    /// <summary>
    /// Without autograd, frees activations the block has consumed (its input once joined with the skip, the skip, a
    /// resnet output once the transformer has read it): otherwise each stays alive until the caller's scope ends, and
    /// at 64x64 latents they add up to hundreds of megabytes per step. With autograd the graph needs them.
    /// </summary>
    protected static void FreeIfInference(params Tensor[] consumed)
    {
        if (torch.is_grad_enabled()) return;
        foreach (var t in consumed) t.Dispose();
    }

    protected static Tensor Upsample(ModuleList<Upsample2D>? upsamplers, Tensor x, long[]? size)
    {
        if (upsamplers is null) return x;
        var y = upsamplers[0].Forward(x, size);
        FreeIfInference(x);
        return y;
    }
}

/// <summary>An encoder stage: its output and the skip connections it hands to the decoder.</summary>
public abstract class UNetDownBlock : UNetBlock
{
    protected UNetDownBlock(string name) : base(name) { }

    /// <summary>Runs the stage, appending each skip connection to <paramref name="skips"/>.</summary>
    public abstract Tensor Forward(Tensor x, Tensor temb, Tensor context, List<Tensor> skips, bool checkpoint);
}

/// <summary>A decoder stage, consuming skip connections from the end of the list.</summary>
public abstract class UNetUpBlock : UNetBlock
{
    protected UNetUpBlock(string name) : base(name) { }

    public abstract int SkipCount { get; }

    /// <param name="upsampleSize">Size for the upsampler (the next skip's H/W) or null for 2x.</param>
    public abstract Tensor Forward(Tensor x, List<Tensor> skips, Tensor temb, Tensor context, long[]? upsampleSize, bool checkpoint);
}

/// <summary>(ResnetBlock2D -> Transformer2DModel) x layers, then an optional stride-2 downsampler.</summary>
public sealed class CrossAttnDownBlock2D : UNetDownBlock
{
    public ModuleList<Transformer2DModel> attentions;
    public ModuleList<ResnetBlock2D> resnets;
    public ModuleList<Downsample2D>? downsamplers;

    public CrossAttnDownBlock2D(int inChannels, int outChannels, int tembChannels, int layers, int groups, double eps, int heads, int contextDim, bool linearProjection, bool addDownsample)
        : base(nameof(CrossAttnDownBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers).Select(i => new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, tembChannels, groups, eps)).ToArray());
        attentions = new ModuleList<Transformer2DModel>(Enumerable.Range(0, layers).Select(_ => new Transformer2DModel(outChannels, heads, contextDim, groups, linearProjection)).ToArray());
        if (addDownsample) downsamplers = new ModuleList<Downsample2D>(new Downsample2D(outChannels, 1));
        RegisterComponents();
    }

    public override Tensor Forward(Tensor x, Tensor temb, Tensor context, List<Tensor> skips, bool checkpoint)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            var h = RunResnet(resnets[i], x, temb, checkpoint);
            x = RunTransformer(attentions[i], h, context, checkpoint);
            FreeIfInference(h);
            skips.Add(x);
        }
        if (downsamplers is not null)
        {
            x = downsamplers[0].call(x);
            skips.Add(x);
        }
        return x;
    }
}

/// <summary>ResnetBlock2D x layers, then an optional downsampler (no attention).</summary>
public sealed class DownBlock2D : UNetDownBlock
{
    public ModuleList<ResnetBlock2D> resnets;
    public ModuleList<Downsample2D>? downsamplers;

    public DownBlock2D(int inChannels, int outChannels, int tembChannels, int layers, int groups, double eps, bool addDownsample) : base(nameof(DownBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers).Select(i => new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, tembChannels, groups, eps)).ToArray());
        if (addDownsample) downsamplers = new ModuleList<Downsample2D>(new Downsample2D(outChannels, 1));
        RegisterComponents();
    }

    public override Tensor Forward(Tensor x, Tensor temb, Tensor context, List<Tensor> skips, bool checkpoint)
    {
        foreach (var resnet in resnets)
        {
            x = RunResnet(resnet, x, temb, checkpoint);
            skips.Add(x);
        }
        if (downsamplers is not null)
        {
            x = downsamplers[0].call(x);
            skips.Add(x);
        }
        return x;
    }
}

/// <summary>The bottleneck: ResnetBlock2D -> Transformer2DModel -> ResnetBlock2D.</summary>
public sealed class UNetMidBlock2DCrossAttn : UNetBlock
{
    public ModuleList<Transformer2DModel> attentions;
    public ModuleList<ResnetBlock2D> resnets;

    public UNetMidBlock2DCrossAttn(int channels, int tembChannels, int groups, double eps, int heads, int contextDim, bool linearProjection) : base(nameof(UNetMidBlock2DCrossAttn))
    {
        resnets = new ModuleList<ResnetBlock2D>(new ResnetBlock2D(channels, channels, tembChannels, groups, eps), new ResnetBlock2D(channels, channels, tembChannels, groups, eps));
        attentions = new ModuleList<Transformer2DModel>(new Transformer2DModel(channels, heads, contextDim, groups, linearProjection));
        RegisterComponents();
    }

    public Tensor Forward(Tensor x, Tensor temb, Tensor context, bool checkpoint)
    {
        var h1 = RunResnet(resnets[0], x, temb, checkpoint);
        var h2 = RunTransformer(attentions[0], h1, context, checkpoint);
        FreeIfInference(h1);
        var output = RunResnet(resnets[1], h2, temb, checkpoint);
        FreeIfInference(h2);
        return output;
    }
}

/// <summary>(concat skip -> ResnetBlock2D -> Transformer2DModel) x (layers+1), then an optional upsampler.</summary>
public sealed class CrossAttnUpBlock2D : UNetUpBlock
{
    public ModuleList<Transformer2DModel> attentions;
    public ModuleList<ResnetBlock2D> resnets;
    public ModuleList<Upsample2D>? upsamplers;

    public CrossAttnUpBlock2D(int inChannels, int prevOutputChannels, int outChannels, int tembChannels, int layers, int groups, double eps, int heads, int contextDim, bool linearProjection, bool addUpsample)
        : base(nameof(CrossAttnUpBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>(UpResnets(inChannels, prevOutputChannels, outChannels, tembChannels, layers, groups, eps));
        attentions = new ModuleList<Transformer2DModel>(Enumerable.Range(0, layers).Select(_ => new Transformer2DModel(outChannels, heads, contextDim, groups, linearProjection)).ToArray());
        if (addUpsample) upsamplers = new ModuleList<Upsample2D>(new Upsample2D(outChannels));
        RegisterComponents();
    }

    public override int SkipCount => resnets.Count;

    public override Tensor Forward(Tensor x, List<Tensor> skips, Tensor temb, Tensor context, long[]? upsampleSize, bool checkpoint)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            var skip = PopLast(skips);
            var joined = torch.cat([x, skip], 1);
            FreeIfInference(x, skip);
            var h = RunResnet(resnets[i], joined, temb, checkpoint);
            FreeIfInference(joined);
            x = RunTransformer(attentions[i], h, context, checkpoint);
            FreeIfInference(h);
        }
        return Upsample(upsamplers, x, upsampleSize);
    }

    /// <summary>Resnet j takes the previous output (j = 0) or this block's width, plus the skip's width.</summary>
    internal static ResnetBlock2D[] UpResnets(int inChannels, int prevOutputChannels, int outChannels, int tembChannels, int layers, int groups, double eps) =>
        Enumerable.Range(0, layers).Select(j =>
        {
            int skipChannels = j == layers - 1 ? inChannels : outChannels;
            int resnetIn = j == 0 ? prevOutputChannels : outChannels;
            return new ResnetBlock2D(resnetIn + skipChannels, outChannels, tembChannels, groups, eps);
        }).ToArray();

    internal static Tensor PopLast(List<Tensor> skips)
    {
        var t = skips[^1];
        skips.RemoveAt(skips.Count - 1);
        return t;
    }
}

/// <summary>(concat skip -> ResnetBlock2D) x (layers+1), then an optional upsampler.</summary>
public sealed class UpBlock2D : UNetUpBlock
{
    public ModuleList<ResnetBlock2D> resnets;
    public ModuleList<Upsample2D>? upsamplers;

    public UpBlock2D(int inChannels, int prevOutputChannels, int outChannels, int tembChannels, int layers, int groups, double eps, bool addUpsample) : base(nameof(UpBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>(CrossAttnUpBlock2D.UpResnets(inChannels, prevOutputChannels, outChannels, tembChannels, layers, groups, eps));
        if (addUpsample) upsamplers = new ModuleList<Upsample2D>(new Upsample2D(outChannels));
        RegisterComponents();
    }

    public override int SkipCount => resnets.Count;

    public override Tensor Forward(Tensor x, List<Tensor> skips, Tensor temb, Tensor context, long[]? upsampleSize, bool checkpoint)
    {
        foreach (var resnet in resnets)
        {
            var skip = CrossAttnUpBlock2D.PopLast(skips);
            var joined = torch.cat([x, skip], 1);
            FreeIfInference(x, skip);
            x = RunResnet(resnet, joined, temb, checkpoint);
            FreeIfInference(joined);
        }
        return Upsample(upsamplers, x, upsampleSize);
    }
}
