using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Captioning;

/// <summary>
/// BLIP's image encoder: a ViT (patch convolution, class token, learned positions, pre-LN transformer blocks,
/// final LayerNorm). <c>forward(pixel_values [B,3,S,S]) -> last_hidden_state [B, 1 + patches, hidden]</c>,
/// the image embeddings the caption decoder attends to.
/// </summary>
public sealed class BlipVisionModel : nn.Module<Tensor, Tensor>
{
    public BlipVisionEmbeddings embeddings;
    public BlipVisionEncoder encoder;
    public LayerNorm post_layernorm;

    public BlipVisionModel(BlipVisionConfig config) : base(nameof(BlipVisionModel))
    {
        embeddings = new BlipVisionEmbeddings(config);
        encoder = new BlipVisionEncoder(config);
        post_layernorm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixelValues) => Forward(pixelValues, null);

    /// <param name="hiddenStates">When given, receives the embeddings and each block's output (before the final norm).</param>
    public Tensor Forward(Tensor pixelValues, List<Tensor>? hiddenStates)
    {
        var h = embeddings.forward(pixelValues);
        hiddenStates?.Add(h);
        h = encoder.Forward(h, hiddenStates);
        return post_layernorm.forward(h);
    }
}

public sealed class BlipVisionEmbeddings : nn.Module<Tensor, Tensor>
{
    public Parameter class_embedding;
    public Conv2d patch_embedding;
    public Parameter position_embedding;

    public BlipVisionEmbeddings(BlipVisionConfig config) : base(nameof(BlipVisionEmbeddings))
    {
        class_embedding = new Parameter(torch.randn(1, 1, config.HiddenSize) * 0.02);
        patch_embedding = nn.Conv2d(3, config.HiddenSize, config.PatchSize, stride: config.PatchSize);
        position_embedding = new Parameter(torch.randn(1, config.NumPositions, config.HiddenSize) * 0.02);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixelValues)
    {
        using var scope = torch.NewDisposeScope();
        var x = pixelValues.to(patch_embedding.weight!.dtype);
        // Patches in row-major order (H, then W), class token first.
        var patches = patch_embedding.forward(x).flatten(2).transpose(1, 2);
        var cls = class_embedding.expand(patches.shape[0], 1, -1).to(patches.dtype);
        var h = torch.cat([cls, patches], 1);
        return (h + position_embedding[.., ..(int)h.shape[1]]).MoveToOuterDisposeScope();
    }
}

public sealed class BlipVisionEncoder : nn.Module<Tensor, Tensor>
{
    public ModuleList<BlipVisionLayer> layers = new();

    public BlipVisionEncoder(BlipVisionConfig config) : base(nameof(BlipVisionEncoder))
    {
        for (int i = 0; i < config.NumHiddenLayers; i++) layers.Add(new BlipVisionLayer(config));
        RegisterComponents();
    }

    public override Tensor forward(Tensor h) => Forward(h, null);

    public Tensor Forward(Tensor h, List<Tensor>? hiddenStates)
    {
        using var scope = torch.NewDisposeScope();
        var outputs = new List<Tensor>();
        var x = h;
        foreach (var layer in layers)
        {
            x = layer.forward(x);
            if (hiddenStates is not null) outputs.Add(x);
        }
        if (hiddenStates is null) return x.MoveToOuterDisposeScope();
        foreach (var o in outputs) hiddenStates.Add(o.MoveToOuterDisposeScope());
        return x;
    }
}

/// <summary>Pre-LN transformer block: <c>x + attn(ln1(x))</c>, then <c>x + mlp(ln2(x))</c>.</summary>
public sealed class BlipVisionLayer : nn.Module<Tensor, Tensor>
{
    public BlipVisionAttention self_attn;
    public LayerNorm layer_norm1;
    public BlipVisionMlp mlp;
    public LayerNorm layer_norm2;

    public BlipVisionLayer(BlipVisionConfig config) : base(nameof(BlipVisionLayer))
    {
        self_attn = new BlipVisionAttention(config);
        layer_norm1 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        mlp = new BlipVisionMlp(config);
        layer_norm2 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = x + self_attn.forward(layer_norm1.forward(x));
        h = h + mlp.forward(layer_norm2.forward(h));
        return h.MoveToOuterDisposeScope();
    }
}

/// <summary>Multi-head self-attention with one fused <c>qkv</c> projection (rows q, k, v) and an output <c>projection</c>.</summary>
public sealed class BlipVisionAttention : nn.Module<Tensor, Tensor>
{
    public Linear qkv;
    public Linear projection;
    private readonly int _heads;

    public BlipVisionAttention(BlipVisionConfig config) : base(nameof(BlipVisionAttention))
    {
        _heads = config.NumAttentionHeads;
        qkv = nn.Linear(config.HiddenSize, 3 * config.HiddenSize);
        projection = nn.Linear(config.HiddenSize, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        var parts = qkv.forward(x).reshape(b, n, 3, _heads, c / _heads).permute(2, 0, 3, 1, 4);
        // softmax(q k^T / sqrt(head_dim)) v, no mask.
        var context = nn.functional.scaled_dot_product_attention(parts[0], parts[1], parts[2]);
        var merged = context.transpose(1, 2).reshape(b, n, c);
        return projection.forward(merged).MoveToOuterDisposeScope();
    }
}

public sealed class BlipVisionMlp : nn.Module<Tensor, Tensor>
{
    public Linear fc1;
    public Linear fc2;

    public BlipVisionMlp(BlipVisionConfig config) : base(nameof(BlipVisionMlp))
    {
        fc1 = nn.Linear(config.HiddenSize, config.IntermediateSize);
        fc2 = nn.Linear(config.IntermediateSize, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return fc2.forward(nn.functional.gelu(fc1.forward(x))).MoveToOuterDisposeScope();
    }
}
