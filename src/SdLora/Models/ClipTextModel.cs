using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// The CLIP text transformer (transformers' <c>CLIPTextModel</c>), SD1.x's text encoder: token + position embeddings,
/// pre-norm transformer layers with causal self-attention, a final LayerNorm. Parameter names are transformers'
/// (<c>text_model.encoder.layers.0.self_attn.q_proj.weight</c>, ...). Position ids are computed, not stored, so
/// checkpoints with or without <c>text_model.embeddings.position_ids</c> load alike.
/// </summary>
public sealed class ClipTextModel : nn.Module<Tensor, Tensor>
{
    public readonly ClipTextTransformer text_model;

    public ClipTextConfig Config { get; }
    public int NumLayers => Config.NumHiddenLayers;

    public ClipTextModel(ClipTextConfig config) : base(nameof(ClipTextModel))
    {
        Config = config;
        text_model = new ClipTextTransformer(config);
        RegisterComponents();
    }

    /// <summary><c>last_hidden_state</c> [batch, seq, hidden]: the SD1.x conditioning.</summary>
    public override Tensor forward(Tensor inputIds) => Encode(inputIds);

    /// <summary>
    /// The conditioning with "CLIP skip" as A1111 and kohya count it: 1 = the last layer's output through the final
    /// LayerNorm (<c>last_hidden_state</c>); 2 = the penultimate layer's output through the final LayerNorm; n = the
    /// n-th hidden state from the end through the final LayerNorm. Layers after the one used are not run.
    /// </summary>
    public Tensor Encode(Tensor inputIds, int clipSkip = 1)
    {
        if (clipSkip < 1 || clipSkip > NumLayers)
            throw new SdLoraException($"CLIP skip {clipSkip} is out of range: this text encoder has {NumLayers} layers, so use 1 to {NumLayers} (1 = last layer, 2 = penultimate)");
        using var scope = NewDisposeScope();
        var hidden = text_model.embeddings.forward(CheckIds(inputIds));
        int layersToRun = NumLayers - (clipSkip - 1);
        for (int i = 0; i < layersToRun; i++) hidden = text_model.encoder.layers[i].forward(hidden);
        return text_model.final_layer_norm.forward(hidden).MoveToOuterDisposeScope();
    }

    /// <summary>Everything transformers returns with <c>output_hidden_states=True</c>.</summary>
    public ClipTextOutput ForwardAll(Tensor inputIds)
    {
        using var scope = NewDisposeScope();
        var ids = CheckIds(inputIds);
        var hiddenStates = new List<Tensor> { text_model.embeddings.forward(ids) };
        foreach (var layer in text_model.encoder.layers) hiddenStates.Add(layer.forward(hiddenStates[^1]));
        var last = text_model.final_layer_norm.forward(hiddenStates[^1]);
        // transformers' pooling: with the legacy config (eos_token_id == 2) the position of the largest id,
        // otherwise the first position of eos_token_id.
        var eosPositions = Config.EosTokenId == 2 ? ids.argmax(-1) : ids.eq(Config.EosTokenId).to(ScalarType.Int32).argmax(-1);
        var pooled = last[arange(last.shape[0], device: last.device), eosPositions];
        foreach (var h in hiddenStates) h.MoveToOuterDisposeScope();
        return new ClipTextOutput(last.MoveToOuterDisposeScope(), pooled.MoveToOuterDisposeScope(), hiddenStates);
    }

    private Tensor CheckIds(Tensor inputIds)
    {
        if (inputIds.dim() != 2) throw new ArgumentException($"input ids must be [batch, seq], got [{string.Join(",", inputIds.shape)}]", nameof(inputIds));
        if (inputIds.shape[1] > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"{inputIds.shape[1]} tokens exceed the text encoder's {Config.MaxPositionEmbeddings} positions; split the prompt into chunks", nameof(inputIds));
        var ids = inputIds.dtype == ScalarType.Int64 ? inputIds : inputIds.to(ScalarType.Int64);
        if (ids.numel() > 0)
        {
            long min = ids.min().item<long>(), max = ids.max().item<long>();
            long tokens = text_model.embeddings.TokenCount;
            if (min < 0 || max >= tokens)
                throw new SdLoraException(max >= Config.VocabSize && min >= 0
                    ? $"token id {max} is past the text encoder's vocabulary of {Config.VocabSize} and its {tokens - Config.VocabSize} added token rows; add the embedding's vectors before encoding"
                    : $"token id {(min < 0 ? min : max)} is outside the text encoder's vocabulary of {Config.VocabSize}; the tokenizer does not belong to this model");
        }
        return ids;
    }
}

/// <summary>Outputs of <see cref="ClipTextModel.ForwardAll"/>. <c>HiddenStates[0]</c> = embeddings, <c>[i]</c> = after layer i (no final norm).</summary>
public sealed record ClipTextOutput(Tensor LastHiddenState, Tensor PoolerOutput, IReadOnlyList<Tensor> HiddenStates) : IDisposable
{
    public void Dispose()
    {
        LastHiddenState.Dispose();
        PoolerOutput.Dispose();
        foreach (var h in HiddenStates) h.Dispose();
    }
}

public sealed class ClipTextTransformer : nn.Module<Tensor, Tensor>
{
    public readonly ClipTextEmbeddings embeddings;
    public readonly ClipEncoder encoder;
    public readonly LayerNorm final_layer_norm;

    public ClipTextTransformer(ClipTextConfig config) : base(nameof(ClipTextTransformer))
    {
        embeddings = new ClipTextEmbeddings(config);
        encoder = new ClipEncoder(config);
        final_layer_norm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds) => final_layer_norm.forward(encoder.forward(embeddings.forward(inputIds)));
}

/// <summary>
/// Token + position embeddings. <see cref="AddedTokens"/> extends the token table without touching it: ids from the
/// vocabulary size on pick its rows (textual-inversion vectors, trained or loaded), so the table's own rows stay exactly
/// as loaded and gradients reach only the added rows.
/// </summary>
public sealed class ClipTextEmbeddings : nn.Module<Tensor, Tensor>
{
    public readonly Embedding token_embedding;
    public readonly Embedding position_embedding;
    private readonly long _vocabSize;

    public ClipTextEmbeddings(ClipTextConfig config) : base(nameof(ClipTextEmbeddings))
    {
        token_embedding = nn.Embedding(config.VocabSize, config.HiddenSize);
        position_embedding = nn.Embedding(config.MaxPositionEmbeddings, config.HiddenSize);
        _vocabSize = config.VocabSize;
        RegisterComponents();
    }

    /// <summary>
    /// Rows <c>[n, hidden]</c> for the token ids <c>vocab .. vocab + n - 1</c>, or null. Not a parameter of the module
    /// (not saved, not loaded): whoever sets it owns it and sets it back to null when done.
    /// </summary>
    public Tensor? AddedTokens { get; set; }

    /// <summary>Ids the table answers to: the vocabulary plus <see cref="AddedTokens"/>.</summary>
    public long TokenCount => _vocabSize + (AddedTokens?.shape[0] ?? 0);

    public override Tensor forward(Tensor inputIds)
    {
        using var positions = arange(inputIds.shape[1], dtype: ScalarType.Int64, device: inputIds.device);
        if (AddedTokens is not { } added) return token_embedding.forward(inputIds) + position_embedding.forward(positions);
        using var scope = NewDisposeScope();
        var isAdded = inputIds.ge(_vocabSize);
        var fromTable = token_embedding.forward(inputIds.clamp_max(_vocabSize - 1));
        var rows = added.to(fromTable.dtype, fromTable.device);
        var addedIds = inputIds.sub(_vocabSize).clamp_min(0);
        var fromAdded = rows.index_select(0, addedIds.flatten()).reshape(fromTable.shape);
        var tokens = torch.where(isAdded.unsqueeze(-1), fromAdded, fromTable);
        return (tokens + position_embedding.forward(positions)).MoveToOuterDisposeScope();
    }
}

public sealed class ClipEncoder : nn.Module<Tensor, Tensor>
{
    public readonly ModuleList<ClipEncoderLayer> layers;

    public ClipEncoder(ClipTextConfig config) : base(nameof(ClipEncoder))
    {
        layers = new ModuleList<ClipEncoderLayer>();
        for (int i = 0; i < config.NumHiddenLayers; i++) layers.Add(new ClipEncoderLayer(config));
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        foreach (var layer in layers) hidden = layer.forward(hidden);
        return hidden;
    }
}

/// <summary>Pre-norm transformer layer: <c>x + attn(ln1(x))</c>, then <c>x + mlp(ln2(x))</c>.</summary>
public sealed class ClipEncoderLayer : nn.Module<Tensor, Tensor>
{
    public readonly ClipAttention self_attn;
    public readonly LayerNorm layer_norm1;
    public readonly ClipMlp mlp;
    public readonly LayerNorm layer_norm2;

    public ClipEncoderLayer(ClipTextConfig config) : base(nameof(ClipEncoderLayer))
    {
        self_attn = new ClipAttention(config);
        layer_norm1 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        mlp = new ClipMlp(config);
        layer_norm2 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        var h = hidden + self_attn.forward(layer_norm1.forward(hidden));
        return (h + mlp.forward(layer_norm2.forward(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>Multi-head causal self-attention: each token attends to itself and the tokens before it.</summary>
public sealed class ClipAttention : nn.Module<Tensor, Tensor>
{
    public readonly AdaptableLinear q_proj;
    public readonly AdaptableLinear k_proj;
    public readonly AdaptableLinear v_proj;
    public readonly AdaptableLinear out_proj;
    private readonly int _heads;

    public ClipAttention(ClipTextConfig config) : base(nameof(ClipAttention))
    {
        if (config.HiddenSize % config.NumAttentionHeads != 0)
            throw new SdLoraException($"text encoder config: hidden_size {config.HiddenSize} is not divisible by num_attention_heads {config.NumAttentionHeads}; fix the config");
        _heads = config.NumAttentionHeads;
        q_proj = new AdaptableLinear(config.HiddenSize, config.HiddenSize);
        k_proj = new AdaptableLinear(config.HiddenSize, config.HiddenSize);
        v_proj = new AdaptableLinear(config.HiddenSize, config.HiddenSize);
        out_proj = new AdaptableLinear(config.HiddenSize, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        long batch = hidden.shape[0], seq = hidden.shape[1], width = hidden.shape[2];
        Tensor Heads(Tensor t) => t.view(batch, seq, _heads, width / _heads).transpose(1, 2);
        var attended = nn.functional.scaled_dot_product_attention(
            Heads(q_proj.forward(hidden)), Heads(k_proj.forward(hidden)), Heads(v_proj.forward(hidden)), null, 0.0, true);
        return out_proj.forward(attended.transpose(1, 2).reshape(batch, seq, width)).MoveToOuterDisposeScope();
    }
}

public sealed class ClipMlp : nn.Module<Tensor, Tensor>
{
    public readonly AdaptableLinear fc1;
    public readonly AdaptableLinear fc2;
    private readonly string _activation;

    public ClipMlp(ClipTextConfig config) : base(nameof(ClipMlp))
    {
        _activation = config.HiddenAct;
        if (_activation is not ("quick_gelu" or "gelu"))
            throw new SdLoraException($"text encoder config: hidden_act '{_activation}' is not supported; use 'quick_gelu' (SD1.x) or 'gelu'");
        fc1 = new AdaptableLinear(config.HiddenSize, config.IntermediateSize);
        fc2 = new AdaptableLinear(config.IntermediateSize, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        var h = fc1.forward(hidden);
        // quick_gelu is OpenAI CLIP's sigmoid approximation of GELU; "gelu" is the exact erf form.
        h = _activation == "quick_gelu" ? h * torch.sigmoid(h * 1.702) : nn.functional.gelu(h);
        return fc2.forward(h).MoveToOuterDisposeScope();
    }
}
