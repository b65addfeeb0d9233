using System.Text.Json;

namespace SdLora.Models;

/// <summary>
/// Model dimensions as plain records. They are read from the model's own files: a diffusers
/// <c>config.json</c> (here), an LDM YAML or the checkpoint's tensor shapes (see <c>Checkpoints/</c>).
/// Modules take a config, never a path.
/// </summary>
public sealed record UNetConfig(
    int InChannels = 4,
    int OutChannels = 4,
    int[]? BlockOutChannels = null,
    string[]? DownBlockTypes = null,
    string[]? UpBlockTypes = null,
    int LayersPerBlock = 2,
    int NormNumGroups = 32,
    double NormEps = 1e-5,
    int CrossAttentionDim = 768,
    int[]? AttentionHeadDim = null,
    bool FlipSinToCos = true,
    int FreqShift = 0,
    bool UseLinearProjection = false,
    int SampleSize = 64,
    string PredictionType = "epsilon")
{
    public int[] Channels => BlockOutChannels ?? [320, 640, 1280, 1280];
    public string[] DownBlocks => DownBlockTypes ?? ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
    public string[] UpBlocks => UpBlockTypes ?? ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];
    /// <summary>diffusers' SD1 naming: <c>attention_head_dim</c> is really the number of heads per block (8 for SD1.x).</summary>
    public int[] HeadsPerBlock => AttentionHeadDim ?? Enumerable.Repeat(8, Channels.Length).ToArray();

    /// <summary>Stable Diffusion 1.x (1.4/1.5) UNet.</summary>
    public static UNetConfig StableDiffusion15 { get; } = new();

    public static UNetConfig FromDiffusersJson(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        var channels = ConfigJson.Ints(r, "block_out_channels") ?? [320, 640, 1280, 1280];
        int[]? heads = null;
        if (r.TryGetProperty("attention_head_dim", out var h))
            heads = h.ValueKind == JsonValueKind.Array ? h.EnumerateArray().Select(x => x.GetInt32()).ToArray() : Enumerable.Repeat(h.GetInt32(), channels.Length).ToArray();
        return new UNetConfig(
            InChannels: ConfigJson.Int(r, "in_channels") ?? 4,
            OutChannels: ConfigJson.Int(r, "out_channels") ?? 4,
            BlockOutChannels: channels,
            DownBlockTypes: ConfigJson.Strings(r, "down_block_types"),
            UpBlockTypes: ConfigJson.Strings(r, "up_block_types"),
            LayersPerBlock: ConfigJson.Int(r, "layers_per_block") ?? 2,
            NormNumGroups: ConfigJson.Int(r, "norm_num_groups") ?? 32,
            NormEps: ConfigJson.Double(r, "norm_eps") ?? 1e-5,
            CrossAttentionDim: ConfigJson.Int(r, "cross_attention_dim") ?? 768,
            AttentionHeadDim: heads,
            FlipSinToCos: ConfigJson.Bool(r, "flip_sin_to_cos") ?? true,
            FreqShift: ConfigJson.Int(r, "freq_shift") ?? 0,
            UseLinearProjection: ConfigJson.Bool(r, "use_linear_projection") ?? false,
            SampleSize: ConfigJson.Int(r, "sample_size") ?? 64);
    }
}

public sealed record AutoencoderKLConfig(
    int InChannels = 3,
    int OutChannels = 3,
    int LatentChannels = 4,
    int[]? BlockOutChannels = null,
    int LayersPerBlock = 2,
    int NormNumGroups = 32,
    int SampleSize = 512,
    double ScalingFactor = 0.18215)
{
    public int[] Channels => BlockOutChannels ?? [128, 256, 512, 512];
    /// <summary>Pixels per latent along each side: every block but the last halves the size (8 for SD's VAE), as diffusers' vae_scale_factor.</summary>
    public int DownsampleFactor => 1 << (Channels.Length - 1);
    public static AutoencoderKLConfig StableDiffusion15 { get; } = new();

    public static AutoencoderKLConfig FromDiffusersJson(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        return new AutoencoderKLConfig(
            InChannels: ConfigJson.Int(r, "in_channels") ?? 3,
            OutChannels: ConfigJson.Int(r, "out_channels") ?? 3,
            LatentChannels: ConfigJson.Int(r, "latent_channels") ?? 4,
            BlockOutChannels: ConfigJson.Ints(r, "block_out_channels"),
            LayersPerBlock: ConfigJson.Int(r, "layers_per_block") ?? 2,
            NormNumGroups: ConfigJson.Int(r, "norm_num_groups") ?? 32,
            SampleSize: ConfigJson.Int(r, "sample_size") ?? 512,
            ScalingFactor: ConfigJson.Double(r, "scaling_factor") ?? 0.18215);
    }
}

public sealed record ClipTextConfig(
    int VocabSize = 49408,
    int HiddenSize = 768,
    int IntermediateSize = 3072,
    int NumHiddenLayers = 12,
    int NumAttentionHeads = 12,
    int MaxPositionEmbeddings = 77,
    string HiddenAct = "quick_gelu",
    double LayerNormEps = 1e-5,
    int EosTokenId = 2)
{
    /// <summary>OpenAI CLIP ViT-L/14 text tower, as used by SD1.x.</summary>
    public static ClipTextConfig StableDiffusion15 { get; } = new();

    public static ClipTextConfig FromDiffusersJson(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        return new ClipTextConfig(
            VocabSize: ConfigJson.Int(r, "vocab_size") ?? 49408,
            HiddenSize: ConfigJson.Int(r, "hidden_size") ?? 768,
            IntermediateSize: ConfigJson.Int(r, "intermediate_size") ?? 3072,
            NumHiddenLayers: ConfigJson.Int(r, "num_hidden_layers") ?? 12,
            NumAttentionHeads: ConfigJson.Int(r, "num_attention_heads") ?? 12,
            MaxPositionEmbeddings: ConfigJson.Int(r, "max_position_embeddings") ?? 77,
            HiddenAct: ConfigJson.String(r, "hidden_act") ?? "quick_gelu",
            LayerNormEps: ConfigJson.Double(r, "layer_norm_eps") ?? 1e-5,
            EosTokenId: ConfigJson.Int(r, "eos_token_id") ?? 2);
    }
}

/// <summary>Small helpers for reading optional values from config JSON.</summary>
internal static class ConfigJson
{
    private static JsonElement? Get(JsonElement r, string name) =>
        r.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public static int? Int(JsonElement r, string name) => Get(r, name) is { } v ? v.GetInt32() : null;
    public static double? Double(JsonElement r, string name) => Get(r, name) is { } v ? v.GetDouble() : null;
    public static bool? Bool(JsonElement r, string name) => Get(r, name) is { } v ? v.GetBoolean() : null;
    public static string? String(JsonElement r, string name) => Get(r, name) is { } v ? v.GetString() : null;
    public static int[]? Ints(JsonElement r, string name) => Get(r, name) is { } v ? v.EnumerateArray().Select(x => x.GetInt32()).ToArray() : null;
    public static string[]? Strings(JsonElement r, string name) => Get(r, name) is { } v ? v.EnumerateArray().Select(x => x.GetString()!).ToArray() : null;
}
