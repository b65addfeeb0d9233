using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// The UNet's spatial transformer: <c>GroupNorm(eps 1e-6) -> proj_in -> BasicTransformerBlock(s) -> proj_out</c>,
/// added to the input. SD1.x uses 1x1 convs for proj_in/proj_out; SD2.x-style configs use linears.
/// </summary>
public sealed class Transformer2DModel : nn.Module<Tensor, Tensor, Tensor>
{
    public GroupNorm norm;
    public nn.Module<Tensor, Tensor> proj_in;
    public ModuleList<BasicTransformerBlock> transformer_blocks;
    public nn.Module<Tensor, Tensor> proj_out;
    private readonly bool _linearProjection;

    public Transformer2DModel(int channels, int heads, int contextDim, int groups, bool useLinearProjection) : base(nameof(Transformer2DModel))
    {
        _linearProjection = useLinearProjection;
        norm = Normalization.GroupNorm(groups, channels, 1e-6);
        proj_in = useLinearProjection ? new AdaptableLinear(channels, channels) : new AdaptableConv2d(channels, channels, 1);
        transformer_blocks = new ModuleList<BasicTransformerBlock>(new BasicTransformerBlock(channels, heads, channels / heads, contextDim));
        proj_out = useLinearProjection ? new AdaptableLinear(channels, channels) : new AdaptableConv2d(channels, channels, 1);
        RegisterComponents();
    }

    /// <param name="x">[B, C, H, W]</param>
    /// <param name="context">[B, M, contextDim]</param>
    public override Tensor forward(Tensor x, Tensor context)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
        var hs = norm.call(x);
        if (_linearProjection)
            hs = proj_in.call(hs.permute(0, 2, 3, 1).reshape(b, h * w, c));
        else
            hs = proj_in.call(hs).permute(0, 2, 3, 1).reshape(b, h * w, c);
        foreach (var block in transformer_blocks) hs = block.call(hs, context);
        if (_linearProjection)
            hs = proj_out.call(hs).reshape(b, h, w, c).permute(0, 3, 1, 2);
        else
            hs = proj_out.call(hs.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous());
        return (hs + x).MoveToOuterDisposeScope();
    }
}

/// <summary>Pre-norm transformer block: self-attention, cross-attention over the text, GEGLU feed-forward.</summary>
public sealed class BasicTransformerBlock : nn.Module<Tensor, Tensor, Tensor>
{
    public LayerNorm norm1;
    public Attention attn1;
    public LayerNorm norm2;
    public Attention attn2;
    public LayerNorm norm3;
    public FeedForward ff;

    public BasicTransformerBlock(int dim, int heads, int headDim, int contextDim) : base(nameof(BasicTransformerBlock))
    {
        norm1 = nn.LayerNorm(dim, 1e-5);
        attn1 = new Attention(dim, dim, heads, headDim, qkvBias: false);
        norm2 = nn.LayerNorm(dim, 1e-5);
        attn2 = new Attention(dim, contextDim, heads, headDim, qkvBias: false);
        norm3 = nn.LayerNorm(dim, 1e-5);
        ff = new FeedForward(dim, 4 * dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor context)
    {
        var h1 = Residual(x, t => attn1.call(norm1.call(t), null));
        var h2 = Residual(h1, t => attn2.call(norm2.call(t), context));
        if (!torch.is_grad_enabled()) h1.Dispose();
        var h3 = Residual(h2, t => ff.call(norm3.call(t)));
        if (!torch.is_grad_enabled()) h2.Dispose();
        return h3;
    }

    /// <summary>
    /// <c>branch(x) + x</c>. Without autograd the branch's intermediates (norm output, q/k/v, the feed-forward's wide
    /// hidden layer) are freed as soon as it returns and the sum is formed in place: at 64x64 latents one block's
    /// intermediates are hundreds of megabytes.
    /// </summary>
    private static Tensor Residual(Tensor x, Func<Tensor, Tensor> branch)
    {
        if (torch.is_grad_enabled()) return branch(x) + x;
        Tensor y;
        using (var scope = torch.NewDisposeScope()) y = branch(x).MoveToOuterDisposeScope();
        return y.add_(x);
    }
}

/// <summary>GEGLU feed-forward: <c>net.0</c> (proj to 2*inner, <c>a * gelu(b)</c>), <c>net.1</c> (dropout), <c>net.2</c> (back to dim).</summary>
public sealed class FeedForward : nn.Module<Tensor, Tensor>
{
    public ModuleList<nn.Module<Tensor, Tensor>> net;

    public FeedForward(int dim, int inner) : base(nameof(FeedForward))
    {
        net = new ModuleList<nn.Module<Tensor, Tensor>>(new GEGLU(dim, inner), nn.Identity(), new AdaptableLinear(inner, dim));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => net[2].call(net[0].call(x));
}

/// <summary>Gated GELU: one projection gives value and gate halves; output <c>value * gelu(gate)</c> (exact erf GELU).</summary>
public sealed class GEGLU : nn.Module<Tensor, Tensor>
{
    public AdaptableLinear proj;

    public GEGLU(int dim, int inner) : base(nameof(GEGLU))
    {
        proj = new AdaptableLinear(dim, 2 * inner);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var projected = proj.call(x);
        var parts = projected.chunk(2, -1);
        if (torch.is_grad_enabled()) return parts[0] * nn.functional.gelu(parts[1]);
        // Inference: the product goes into the GELU's output, and the wide projection is freed at once.
        var gated = nn.functional.gelu(parts[1]).mul_(parts[0]);
        foreach (var p in parts) p.Dispose();
        projected.Dispose();
        return gated;
    }
}
