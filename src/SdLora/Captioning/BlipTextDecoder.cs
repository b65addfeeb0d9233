using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Captioning;

/// <summary>
/// BLIP's caption decoder (transformers' <c>BlipTextLMHeadModel</c>): a BERT whose post-LN blocks run causal
/// self-attention, cross-attention to the image embeddings and an MLP, followed by the LM head.
/// <c>Forward(input_ids [B,T], image_embeds [B,N,Cv]) -> logits [B,T,vocab]</c>.
/// </summary>
public sealed class BlipTextDecoder : nn.Module
{
    public BlipTextModel bert;
    public BlipTextOnlyMlmHead cls;

    public BlipTextConfig Config { get; }

    public BlipTextDecoder(BlipTextConfig config) : base(nameof(BlipTextDecoder))
    {
        Config = config;
        bert = new BlipTextModel(config);
        cls = new BlipTextOnlyMlmHead(config);
        RegisterComponents();
    }

    /// <param name="attentionMask">[B, cached + T], 1 for tokens to attend to; null = all ones.</param>
    /// <param name="cache">Key/value cache for incremental decoding: holds the earlier tokens' keys/values and the
    /// image keys/values; <paramref name="inputIds"/> are then only the new tokens.</param>
    /// <param name="hiddenStates">When given, receives the embeddings and each layer's output.</param>
    public Tensor Forward(Tensor inputIds, Tensor imageEmbeds, Tensor? attentionMask = null, BlipDecoderCache? cache = null, List<Tensor>? hiddenStates = null)
    {
        using var scope = torch.NewDisposeScope();
        var h = bert.Forward(inputIds, imageEmbeds, attentionMask, cache, hiddenStates);
        if (hiddenStates is not null)
            for (int i = 0; i < hiddenStates.Count; i++) hiddenStates[i] = hiddenStates[i].MoveToOuterDisposeScope();
        return cls.predictions.forward(h).MoveToOuterDisposeScope();
    }
}

/// <summary>Keys and values kept between decoding steps: per layer, the self-attention ones of every token so far and the cross-attention ones of the image.</summary>
public sealed class BlipDecoderCache : IDisposable
{
    internal readonly Tensor?[] SelfKeys, SelfValues, CrossKeys, CrossValues;

    /// <summary>How many tokens the cache holds.</summary>
    public long Length { get; internal set; }

    public BlipDecoderCache(int layers)
    {
        SelfKeys = new Tensor?[layers]; SelfValues = new Tensor?[layers];
        CrossKeys = new Tensor?[layers]; CrossValues = new Tensor?[layers];
    }

    /// <summary>Reorders the self-attention rows (beam search: row r takes the history of row <paramref name="rows"/>[r]).
    /// The image keys/values stay: every row keeps its own image.</summary>
    public void ReorderRows(Tensor rows)
    {
        for (int i = 0; i < SelfKeys.Length; i++)
        {
            if (SelfKeys[i] is { } k) Set(ref SelfKeys[i], k.index_select(0, rows));
            if (SelfValues[i] is { } v) Set(ref SelfValues[i], v.index_select(0, rows));
        }
    }

    internal static void Set(ref Tensor? slot, Tensor value)
    {
        var old = slot;
        slot = value.DetachFromDisposeScope();
        old?.Dispose();
    }

    public void Dispose()
    {
        foreach (var arr in new[] { SelfKeys, SelfValues, CrossKeys, CrossValues })
            for (int i = 0; i < arr.Length; i++) { arr[i]?.Dispose(); arr[i] = null; }
    }
}

public sealed class BlipTextModel : nn.Module
{
    public BlipTextEmbeddings embeddings;
    public BlipTextEncoder encoder;

    public BlipTextModel(BlipTextConfig config) : base(nameof(BlipTextModel))
    {
        embeddings = new BlipTextEmbeddings(config);
        encoder = new BlipTextEncoder(config);
        RegisterComponents();
    }

    public Tensor Forward(Tensor inputIds, Tensor imageEmbeds, Tensor? attentionMask, BlipDecoderCache? cache, List<Tensor>? hiddenStates)
    {
        long past = cache?.Length ?? 0;
        long t = inputIds.shape[1], total = past + t;
        var h = embeddings.Forward(inputIds, past);
        hiddenStates?.Add(h);
        // Causal AND padding, added to the scores as (1 - m) * -10000 (the reference's value, not -inf).
        var causal = torch.arange(total, device: inputIds.device).unsqueeze(0) <= torch.arange(past, total, device: inputIds.device).unsqueeze(1);
        var allowed = causal.unsqueeze(0).unsqueeze(0).to(h.dtype);
        if (attentionMask is not null) allowed = allowed * attentionMask.to(h.dtype).unsqueeze(1).unsqueeze(1);
        var mask = (1.0 - allowed) * -10000.0;
        var image = imageEmbeds.to(h.dtype);
        for (int i = 0; i < encoder.layer.Count; i++)
        {
            h = encoder.layer[i].Forward(h, mask, image, cache, i);
            hiddenStates?.Add(h);
        }
        if (cache is not null) cache.Length = total;
        return h;
    }
}

public sealed class BlipTextEmbeddings : nn.Module
{
    public Embedding word_embeddings;
    public Embedding position_embeddings;
    public LayerNorm LayerNorm;

    public BlipTextEmbeddings(BlipTextConfig config) : base(nameof(BlipTextEmbeddings))
    {
        word_embeddings = nn.Embedding(config.VocabSize, config.HiddenSize, padding_idx: config.PadTokenId);
        position_embeddings = nn.Embedding(config.MaxPositionEmbeddings, config.HiddenSize);
        LayerNorm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    /// <summary>Word + absolute position (counting from <paramref name="past"/>), then LayerNorm; no token types.</summary>
    public Tensor Forward(Tensor inputIds, long past)
    {
        long t = inputIds.shape[1];
        if (past + t > position_embeddings.weight!.shape[0])
            throw new SdLoraException($"caption of {past + t} tokens is longer than the model's {position_embeddings.weight!.shape[0]} positions; lower --max-length");
        var positions = torch.arange(past, past + t, device: inputIds.device, dtype: ScalarType.Int64).unsqueeze(0);
        return LayerNorm.forward(word_embeddings.forward(inputIds) + position_embeddings.forward(positions));
    }
}

public sealed class BlipTextEncoder : nn.Module
{
    public ModuleList<BlipTextLayer> layer = new();

    public BlipTextEncoder(BlipTextConfig config) : base(nameof(BlipTextEncoder))
    {
        for (int i = 0; i < config.NumHiddenLayers; i++) layer.Add(new BlipTextLayer(config));
        RegisterComponents();
    }
}

/// <summary>BERT post-LN decoder block: causal self-attention, cross-attention to the image, MLP; each <c>LayerNorm(x + sublayer(x))</c>.</summary>
public sealed class BlipTextLayer : nn.Module
{
    public BlipTextAttention attention;
    public BlipTextAttention crossattention;
    public BlipTextIntermediate intermediate;
    public BlipTextOutput output;

    public BlipTextLayer(BlipTextConfig config) : base(nameof(BlipTextLayer))
    {
        attention = new BlipTextAttention(config, config.HiddenSize);
        crossattention = new BlipTextAttention(config, config.EncoderHiddenSize);
        intermediate = new BlipTextIntermediate(config);
        output = new BlipTextOutput(config);
        RegisterComponents();
    }

    public Tensor Forward(Tensor h, Tensor selfMask, Tensor image, BlipDecoderCache? cache, int index)
    {
        var a = attention.Forward(h, null, selfMask, cache, index);
        var c = crossattention.Forward(a, image, null, cache, index);
        return output.Forward(intermediate.forward(c), c);
    }
}

public sealed class BlipTextAttention : nn.Module
{
    public BlipTextSelfAttention self;
    public BlipTextSelfOutput output;

    public BlipTextAttention(BlipTextConfig config, int keyValueWidth) : base(nameof(BlipTextAttention))
    {
        self = new BlipTextSelfAttention(config, keyValueWidth);
        output = new BlipTextSelfOutput(config);
        RegisterComponents();
    }

    /// <param name="image">Null for self-attention; the image embeddings for cross-attention.</param>
    public Tensor Forward(Tensor h, Tensor? image, Tensor? mask, BlipDecoderCache? cache, int index) =>
        output.Forward(self.Forward(h, image, mask, cache, index), h);
}

/// <summary>Multi-head attention with separate <c>query</c>/<c>key</c>/<c>value</c> projections; scale <c>head_dim^-0.5</c>.</summary>
public sealed class BlipTextSelfAttention : nn.Module
{
    public Linear query;
    public Linear key;
    public Linear value;
    private readonly int _heads;

    public BlipTextSelfAttention(BlipTextConfig config, int keyValueWidth) : base(nameof(BlipTextSelfAttention))
    {
        _heads = config.NumAttentionHeads;
        query = nn.Linear(config.HiddenSize, config.HiddenSize);
        key = nn.Linear(keyValueWidth, config.HiddenSize);
        value = nn.Linear(keyValueWidth, config.HiddenSize);
        RegisterComponents();
    }

    private Tensor Heads(Tensor x) => x.reshape(x.shape[0], x.shape[1], _heads, -1).transpose(1, 2);

    public Tensor Forward(Tensor h, Tensor? image, Tensor? mask, BlipDecoderCache? cache, int index)
    {
        var q = Heads(query.forward(h));
        Tensor k, v;
        if (image is not null)
        {
            // The image keys/values are the same at every step: compute once per caption.
            if (cache?.CrossKeys[index] is { } ck && cache.CrossValues[index] is { } cv) { k = ck; v = cv; }
            else
            {
                k = Heads(key.forward(image));
                v = Heads(value.forward(image));
                if (cache is not null) { BlipDecoderCache.Set(ref cache.CrossKeys[index], k); BlipDecoderCache.Set(ref cache.CrossValues[index], v); }
            }
        }
        else
        {
            k = Heads(key.forward(h));
            v = Heads(value.forward(h));
            if (cache is not null)
            {
                if (cache.SelfKeys[index] is { } pk) k = torch.cat([pk, k], 2);
                if (cache.SelfValues[index] is { } pv) v = torch.cat([pv, v], 2);
                BlipDecoderCache.Set(ref cache.SelfKeys[index], k);
                BlipDecoderCache.Set(ref cache.SelfValues[index], v);
            }
        }
        var context = nn.functional.scaled_dot_product_attention(q, k, v, mask);
        return context.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1);
    }
}

public sealed class BlipTextSelfOutput : nn.Module
{
    public Linear dense;
    public LayerNorm LayerNorm;

    public BlipTextSelfOutput(BlipTextConfig config) : base(nameof(BlipTextSelfOutput))
    {
        dense = nn.Linear(config.HiddenSize, config.HiddenSize);
        LayerNorm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public Tensor Forward(Tensor context, Tensor residual) => LayerNorm.forward(dense.forward(context) + residual);
}

public sealed class BlipTextIntermediate : nn.Module<Tensor, Tensor>
{
    public Linear dense;

    public BlipTextIntermediate(BlipTextConfig config) : base(nameof(BlipTextIntermediate))
    {
        dense = nn.Linear(config.HiddenSize, config.IntermediateSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => nn.functional.gelu(dense.forward(x));
}

public sealed class BlipTextOutput : nn.Module
{
    public Linear dense;
    public LayerNorm LayerNorm;

    public BlipTextOutput(BlipTextConfig config) : base(nameof(BlipTextOutput))
    {
        dense = nn.Linear(config.IntermediateSize, config.HiddenSize);
        LayerNorm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public Tensor Forward(Tensor x, Tensor residual) => LayerNorm.forward(dense.forward(x) + residual);
}

public sealed class BlipTextOnlyMlmHead : nn.Module
{
    public BlipTextLmPredictionHead predictions;

    public BlipTextOnlyMlmHead(BlipTextConfig config) : base(nameof(BlipTextOnlyMlmHead))
    {
        predictions = new BlipTextLmPredictionHead(config);
        RegisterComponents();
    }
}

/// <summary>LM head: dense -> gelu -> LayerNorm -> <c>decoder</c> (its own weight, not tied) + <c>bias</c>.</summary>
public sealed class BlipTextLmPredictionHead : nn.Module<Tensor, Tensor>
{
    public BlipTextPredictionTransform transform;
    public Linear decoder;
    public Parameter bias;

    public BlipTextLmPredictionHead(BlipTextConfig config) : base(nameof(BlipTextLmPredictionHead))
    {
        transform = new BlipTextPredictionTransform(config);
        decoder = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        bias = new Parameter(torch.zeros(config.VocabSize));
        RegisterComponents();
    }

    public override Tensor forward(Tensor h) => nn.functional.linear(transform.forward(h), decoder.weight!, bias);
}

public sealed class BlipTextPredictionTransform : nn.Module<Tensor, Tensor>
{
    public Linear dense;
    public LayerNorm LayerNorm;

    public BlipTextPredictionTransform(BlipTextConfig config) : base(nameof(BlipTextPredictionTransform))
    {
        dense = nn.Linear(config.HiddenSize, config.HiddenSize);
        LayerNorm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor h) => LayerNorm.forward(nn.functional.gelu(dense.forward(h)));
}
