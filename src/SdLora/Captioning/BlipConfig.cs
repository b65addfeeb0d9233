using System.Text.Json;

namespace SdLora.Captioning;

/// <summary>The ViT image encoder of BLIP (<c>vision_config</c>). Defaults are transformers' BlipVisionConfig class defaults.</summary>
public sealed record BlipVisionConfig(
    int HiddenSize = 768,
    int IntermediateSize = 3072,
    int NumHiddenLayers = 12,
    int NumAttentionHeads = 12,
    int ImageSize = 384,
    int PatchSize = 16,
    double LayerNormEps = 1e-5)
{
    public int NumPatches => (ImageSize / PatchSize) * (ImageSize / PatchSize);
    /// <summary>Patches plus the class token.</summary>
    public int NumPositions => NumPatches + 1;
}

/// <summary>The BERT-style caption decoder of BLIP (<c>text_config</c>). Defaults are transformers' BlipTextConfig class defaults.</summary>
public sealed record BlipTextConfig(
    int VocabSize = 30524,
    int HiddenSize = 768,
    int EncoderHiddenSize = 768,
    int IntermediateSize = 3072,
    int NumHiddenLayers = 12,
    int NumAttentionHeads = 8,
    int MaxPositionEmbeddings = 512,
    double LayerNormEps = 1e-12,
    int BosTokenId = 30522,
    int SepTokenId = 102,
    int PadTokenId = 0);

/// <summary>
/// <c>BlipForConditionalGeneration</c>'s configuration, read from a Hugging Face <c>config.json</c> in its full form
/// (every key, as on the Hub) or its short form (only keys that differ from the class defaults).
/// </summary>
public sealed record BlipConfig(BlipVisionConfig Vision, BlipTextConfig Text)
{
    /// <summary>Salesforce/blip-image-captioning-large: ViT-L/16 at 384 and a BERT-base decoder.</summary>
    public static BlipConfig Large { get; } = new(
        new BlipVisionConfig(HiddenSize: 1024, IntermediateSize: 4096, NumHiddenLayers: 24, NumAttentionHeads: 16, ImageSize: 384, PatchSize: 16),
        new BlipTextConfig(EncoderHiddenSize: 1024, NumAttentionHeads: 12));

    public static BlipConfig FromJsonFile(string path)
    {
        if (!File.Exists(path)) throw new SdLoraException($"{path}: not found; a BLIP model folder needs its config.json");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            return FromJson(doc.RootElement);
        }
        catch (JsonException e)
        {
            throw new SdLoraException($"{path}: not valid JSON ({e.Message}); re-download the model's config.json");
        }
        catch (InvalidOperationException e)
        {
            throw new SdLoraException($"{path}: unexpected value ({e.Message}); re-download the model's config.json");
        }
    }

    public static BlipConfig FromJson(JsonElement root)
    {
        var v = root.TryGetProperty("vision_config", out var ve) && ve.ValueKind == JsonValueKind.Object ? ve : default;
        var t = root.TryGetProperty("text_config", out var te) && te.ValueKind == JsonValueKind.Object ? te : default;
        var dv = new BlipVisionConfig();
        var vision = new BlipVisionConfig(
            Int(v, "hidden_size", dv.HiddenSize),
            Int(v, "intermediate_size", dv.IntermediateSize),
            Int(v, "num_hidden_layers", dv.NumHiddenLayers),
            Int(v, "num_attention_heads", dv.NumAttentionHeads),
            Int(v, "image_size", dv.ImageSize),
            Int(v, "patch_size", dv.PatchSize),
            Double(v, "layer_norm_eps", dv.LayerNormEps));
        var dt = new BlipTextConfig();
        var text = new BlipTextConfig(
            Int(t, "vocab_size", dt.VocabSize),
            Int(t, "hidden_size", dt.HiddenSize),
            // transformers always overwrites encoder_hidden_size with the vision width.
            vision.HiddenSize,
            Int(t, "intermediate_size", dt.IntermediateSize),
            Int(t, "num_hidden_layers", dt.NumHiddenLayers),
            Int(t, "num_attention_heads", dt.NumAttentionHeads),
            Int(t, "max_position_embeddings", dt.MaxPositionEmbeddings),
            Double(t, "layer_norm_eps", dt.LayerNormEps),
            Int(t, "bos_token_id", dt.BosTokenId),
            Int(t, "sep_token_id", dt.SepTokenId),
            Int(t, "pad_token_id", dt.PadTokenId));
        return new BlipConfig(vision, text);
    }

    private static int Int(JsonElement obj, string name, int fallback) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var p) && p.ValueKind == JsonValueKind.Number ? p.GetInt32() : fallback;

    private static double Double(JsonElement obj, string name, double fallback) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var p) && p.ValueKind == JsonValueKind.Number ? p.GetDouble() : fallback;
}
