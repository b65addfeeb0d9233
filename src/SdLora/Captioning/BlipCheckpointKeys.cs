using SdLora.IO;
using static TorchSharp.torch;

namespace SdLora.Captioning;

/// <summary>
/// The original BLIP checkpoint (<c>model_large_caption.pth</c>, what kohya's make_captions.py loads) seen through
/// the Hugging Face names: the text decoder keeps its names, the ViT's are renamed as transformers' conversion does.
/// </summary>
public static class BlipCheckpointKeys
{
    private static readonly (string From, string To)[] VisionPrefixes =
    [
        ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
        ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
        ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
        ("visual_encoder.norm.", "vision_model.post_layernorm."),
    ];

    private static readonly (string From, string To)[] BlockParts =
    [
        ("attn.qkv.", "self_attn.qkv."),
        ("attn.proj.", "self_attn.projection."),
        ("norm1.", "layer_norm1."),
        ("norm2.", "layer_norm2."),
        ("mlp.fc1.", "mlp.fc1."),
        ("mlp.fc2.", "mlp.fc2."),
    ];

    /// <summary>The Hugging Face name of an original BLIP key, or null for keys captioning does not use (buffers, other heads).</summary>
    public static string? ToHuggingFace(string key)
    {
        if (key.EndsWith(".position_ids", StringComparison.Ordinal)) return null;
        if (key.StartsWith("text_decoder.", StringComparison.Ordinal)) return key;
        foreach (var (from, to) in VisionPrefixes)
            if (key == from || (from.EndsWith('.') && key.StartsWith(from, StringComparison.Ordinal)))
                return to + key[from.Length..];
        const string blocks = "visual_encoder.blocks.";
        if (key.StartsWith(blocks, StringComparison.Ordinal))
        {
            var rest = key[blocks.Length..];
            int dot = rest.IndexOf('.');
            if (dot > 0 && int.TryParse(rest[..dot], out var index))
            {
                var part = rest[(dot + 1)..];
                foreach (var (from, to) in BlockParts)
                    if (part.StartsWith(from, StringComparison.Ordinal))
                        return $"vision_model.encoder.layers.{index}.{to}{part[from.Length..]}";
            }
        }
        return null;
    }

    /// <summary>An original BLIP state dict under the Hugging Face names (unused keys hidden).</summary>
    public static ITensorSource HuggingFaceView(ITensorSource original) => new RenamedSource(original);

    /// <summary>
    /// The configuration implied by the tensor shapes of a Hugging Face-named source; heads are width / 64 (ViT-B/L,
    /// BERT-base). <paramref name="visionLayerNormEps"/>: 1e-6 for original BLIP weights, 1e-5 in the Hub configs.
    /// </summary>
    public static BlipConfig ConfigFromShapes(ITensorSource source, double visionLayerNormEps)
    {
        long[] Shape(string name) => source.Contains(name) ? source.ShapeOf(name)
            : throw new SdLoraException($"{source.Description}: no tensor '{name}'; this is not a BLIP captioning checkpoint");
        int Count(string prefix) => source.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal))
            .Select(k => k[prefix.Length..].Split('.')[0]).Distinct().Count();
        var patch = Shape("vision_model.embeddings.patch_embedding.weight");
        int visionWidth = (int)patch[0], patchSize = (int)patch[2];
        int positions = (int)Shape("vision_model.embeddings.position_embedding")[1];
        int grid = (int)Math.Round(Math.Sqrt(positions - 1));
        var vision = new BlipVisionConfig(visionWidth, (int)Shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0],
            Count("vision_model.encoder.layers."), visionWidth / 64, grid * patchSize, patchSize, visionLayerNormEps);
        var words = Shape("text_decoder.bert.embeddings.word_embeddings.weight");
        int textWidth = (int)words[1];
        var text = new BlipTextConfig(
            VocabSize: (int)words[0],
            HiddenSize: textWidth,
            EncoderHiddenSize: visionWidth,
            IntermediateSize: (int)Shape("text_decoder.bert.encoder.layer.0.intermediate.dense.weight")[0],
            NumHiddenLayers: Count("text_decoder.bert.encoder.layer."),
            NumAttentionHeads: textWidth / 64,
            MaxPositionEmbeddings: (int)Shape("text_decoder.bert.embeddings.position_embeddings.weight")[0],
            // BLIP's bert-base-uncased: [DEC] is the first id after the 30522-line vocab, [SEP] 102.
            BosTokenId: (int)words[0] - 2);
        return new BlipConfig(vision, text);
    }

    private sealed class RenamedSource : ITensorSource
    {
        private readonly ITensorSource _inner;
        private readonly Dictionary<string, string> _toOriginal = new(StringComparer.Ordinal);

        public RenamedSource(ITensorSource inner)
        {
            _inner = inner;
            foreach (var key in inner.Keys)
                if (ToHuggingFace(key) is { } name) _toOriginal.TryAdd(name, key);
        }

        public string Description => _inner.Description;
        public IEnumerable<string> Keys => _toOriginal.Keys;
        public bool Contains(string name) => _toOriginal.ContainsKey(name);
        public long[] ShapeOf(string name) => _inner.ShapeOf(_toOriginal[name]);
        public Tensor Load(string name, ScalarType? dtype = null) => _inner.Load(_toOriginal[name], dtype);
    }
}
