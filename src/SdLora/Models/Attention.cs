using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// Multi-head attention with diffusers' names: <c>to_q</c>, <c>to_k</c>, <c>to_v</c>, <c>to_out.0</c>.
/// Self-attention when no context is given, cross-attention over the text context otherwise.
/// The UNet's q/k/v have no bias; the VAE's do.
/// </summary>
public sealed class Attention : nn.Module<Tensor, Tensor?, Tensor>
{
    public AdaptableLinear to_q;
    public AdaptableLinear to_k;
    public AdaptableLinear to_v;
    public ModuleList<AdaptableLinear> to_out;
    private readonly int _heads;

    public Attention(int queryDim, int contextDim, int heads, int headDim, bool qkvBias) : base(nameof(Attention))
    {
        _heads = heads;
        int inner = heads * headDim;
        to_q = new AdaptableLinear(queryDim, inner, qkvBias);
        to_k = new AdaptableLinear(contextDim, inner, qkvBias);
        to_v = new AdaptableLinear(contextDim, inner, qkvBias);
        to_out = new ModuleList<AdaptableLinear>(new AdaptableLinear(inner, queryDim));
        RegisterComponents();
    }

    /// <param name="x">[B, N, queryDim]</param>
    /// <param name="context">[B, M, contextDim], or null for self-attention.</param>
    public override Tensor forward(Tensor x, Tensor? context)
    {
        var ctx = context ?? x;
        var o = ScaledDotProduct.MultiHead(to_q.call(x), to_k.call(ctx), to_v.call(ctx), _heads);
        return to_out[0].call(o);
    }
}

/// <summary>
/// <c>softmax(q k^T / sqrt(d)) v</c> over heads. Inputs and output are [B, N, heads*d].
/// Goes through the fused SDPA kernel in the inputs' dtype under every <see cref="SdLora.CpuLowPrecision"/> policy:
/// its CPU bf16 path accumulates in fp32 and measured as fast as fp32 (unlike bf16 bmm, which is very slow on CPUs
/// without native bf16).
/// </summary>
public static class ScaledDotProduct
{
    public static Tensor MultiHead(Tensor q, Tensor k, Tensor v, int heads)
    {
        long b = q.shape[0], n = q.shape[1], m = k.shape[1], inner = q.shape[2];
        long d = inner / heads;
        var qh = q.view(b, n, heads, d).transpose(1, 2);
        var kh = k.view(b, m, heads, d).transpose(1, 2);
        var vh = v.view(b, m, heads, d).transpose(1, 2);
        var o = nn.functional.scaled_dot_product_attention(qh, kh, vh);
        return o.transpose(1, 2).reshape(b, n, inner);
    }
}
