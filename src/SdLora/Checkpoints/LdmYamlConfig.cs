using System.Text.Json;
using SdLora.Models;

namespace SdLora.Checkpoints;

/// <summary>Training noise schedule and prediction target of a checkpoint (diffusers scheduler names).</summary>
public sealed record NoiseScheduleSettings(
    double BetaStart = 0.00085,
    double BetaEnd = 0.012,
    string BetaSchedule = "scaled_linear",
    int TrainTimesteps = 1000,
    string PredictionType = "epsilon")
{
    public static NoiseScheduleSettings StableDiffusion15 { get; } = new();

    /// <summary>Reads a diffusers <c>scheduler_config.json</c>.</summary>
    public static NoiseScheduleSettings FromDiffusersJson(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        return new NoiseScheduleSettings(
            ConfigJson.Double(r, "beta_start") ?? 0.00085,
            ConfigJson.Double(r, "beta_end") ?? 0.012,
            ConfigJson.String(r, "beta_schedule") ?? "scaled_linear",
            ConfigJson.Int(r, "num_train_timesteps") ?? 1000,
            ConfigJson.String(r, "prediction_type") ?? "epsilon");
    }
}

/// <summary>
/// The model dimensions in an original LDM config (<c>v1-inference.yaml</c> and files shaped like it), translated to
/// the diffusers/transformers config records. The text encoder's dims are not part of that schema: SD1.5's CLIP-L
/// is assumed unless a header comment holds a JSON object of transformers' CLIPTextConfig fields.
/// </summary>
public sealed record LdmYamlConfig(UNetConfig UNet, AutoencoderKLConfig Vae, ClipTextConfig TextEncoder, NoiseScheduleSettings Schedule, string? CondStageTarget)
{
    public static LdmYamlConfig Load(string path)
    {
        if (!File.Exists(path)) throw new SdLoraException($"{path}: config file not found; check the --config path");
        return Parse(File.ReadAllText(path), path);
    }

    public static LdmYamlConfig Parse(string text, string file)
    {
        var root = MiniYaml.Parse(text, file);
        var model = MiniYaml.At(root, "model.params") as Dictionary<string, object?>
            ?? throw new SdLoraException($"{file}: has no 'model: params:' section, so it is not an LDM model config; pass a file like v1-inference.yaml");
        var unetParams = MiniYaml.At(model, "unet_config.params") as Dictionary<string, object?>
            ?? throw new SdLoraException($"{file}: has no 'unet_config: params:' section; pass an LDM config like v1-inference.yaml");
        var dd = MiniYaml.At(model, "first_stage_config.params.ddconfig") as Dictionary<string, object?>
            ?? throw new SdLoraException($"{file}: has no 'first_stage_config: params: ddconfig:' section; pass an LDM config like v1-inference.yaml");

        double? Num(Dictionary<string, object?> d, string k) => MiniYaml.Number(d.GetValueOrDefault(k));
        int? Int(Dictionary<string, object?> d, string k) => Num(d, k) is { } v ? (int)v : null;

        string prediction = MiniYaml.At(model, "parameterization") as string == "v" ? "v_prediction" : "epsilon";

        // UNet: level i works at 2^i times downsampled resolution and has attention when that factor is listed.
        int modelChannels = Int(unetParams, "model_channels") ?? 320;
        var mult = MiniYaml.Ints(unetParams.GetValueOrDefault("channel_mult")) ?? [1, 2, 4, 4];
        var attnRes = MiniYaml.Ints(unetParams.GetValueOrDefault("attention_resolutions")) ?? [4, 2, 1];
        var channels = mult.Select(m => m * modelChannels).ToArray();
        var down = Enumerable.Range(0, mult.Length).Select(i => attnRes.Contains(1 << i) ? "CrossAttnDownBlock2D" : "DownBlock2D").ToArray();
        var up = down.Reverse().Select(t => t == "CrossAttnDownBlock2D" ? "CrossAttnUpBlock2D" : "UpBlock2D").ToArray();
        int numHeads = Int(unetParams, "num_heads") ?? 8;
        int headChannels = Int(unetParams, "num_head_channels") ?? -1;
        var heads = headChannels > 0 ? channels.Select(c => c / headChannels).ToArray() : Enumerable.Repeat(numHeads, channels.Length).ToArray();
        var unet = new UNetConfig(
            InChannels: Int(unetParams, "in_channels") ?? 4,
            OutChannels: Int(unetParams, "out_channels") ?? 4,
            BlockOutChannels: channels,
            DownBlockTypes: down,
            UpBlockTypes: up,
            LayersPerBlock: Int(unetParams, "num_res_blocks") ?? 2,
            CrossAttentionDim: Int(unetParams, "context_dim") ?? 768,
            AttentionHeadDim: heads,
            UseLinearProjection: MiniYaml.Bool(unetParams.GetValueOrDefault("use_linear_in_transformer")) ?? false,
            SampleSize: Int(model, "image_size") ?? 64,
            PredictionType: prediction);

        int ch = Int(dd, "ch") ?? 128;
        var vaeMult = MiniYaml.Ints(dd.GetValueOrDefault("ch_mult")) ?? [1, 2, 4, 4];
        var vae = new AutoencoderKLConfig(
            InChannels: Int(dd, "in_channels") ?? 3,
            OutChannels: Int(dd, "out_ch") ?? 3,
            LatentChannels: Int(dd, "z_channels") ?? 4,
            BlockOutChannels: vaeMult.Select(m => m * ch).ToArray(),
            LayersPerBlock: Int(dd, "num_res_blocks") ?? 2,
            SampleSize: Int(dd, "resolution") ?? 256,
            ScalingFactor: Num(model, "scale_factor") ?? 0.18215);

        var schedule = new NoiseScheduleSettings(
            BetaStart: Num(model, "linear_start") ?? 0.00085,
            BetaEnd: Num(model, "linear_end") ?? 0.012,
            // LDM's "linear" schedule is linear in sqrt(beta): diffusers calls it scaled_linear.
            BetaSchedule: "scaled_linear",
            TrainTimesteps: Int(model, "timesteps") ?? 1000,
            PredictionType: prediction);

        return new LdmYamlConfig(unet, vae, ClipFromHeader(text, file), schedule, MiniYaml.At(model, "cond_stage_config.target") as string);
    }

    /// <summary>SD1.5's CLIP-L, or the JSON object in a comment line (the tiny test model's convention).</summary>
    private static ClipTextConfig ClipFromHeader(string text, string file)
    {
        foreach (var line in text.Split('\n'))
        {
            var t = line.Trim();
            if (!t.StartsWith('#')) continue;
            int open = t.IndexOf('{'), close = t.LastIndexOf('}');
            if (open < 0 || close < open) continue;
            try { return ClipTextConfig.FromDiffusersJson(t[open..(close + 1)]); }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
            {
                throw new SdLoraException($"{file}: the text-encoder JSON in its header comment is invalid ({e.Message.Split('\n')[0]}); fix or remove that comment");
            }
        }
        return ClipTextConfig.StableDiffusion15;
    }
}
