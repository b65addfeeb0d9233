using System.Globalization;
using System.Text.Json;
using SdLora.Models;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;

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
/// <remarks>
/// The YAML is read by YamlDotNet's representation model: nodes and strings only, no type is ever created from the
/// file, so the <c>target:</c> class names (and any <c>!!python/...</c> tag) stay plain text. Before building that
/// tree the event stream is checked for size and nesting, since YamlDotNet's scanner slows down quadratically on
/// deeply nested flow collections and its tree builder recurses once per level (a 200 KB file of brackets
/// overflowed the stack). Aliases are never expanded: values are only looked up along paths.
/// </remarks>
public sealed record LdmYamlConfig(UNetConfig UNet, AutoencoderKLConfig Vae, ClipTextConfig TextEncoder, NoiseScheduleSettings Schedule, string? CondStageTarget)
{
    /// <summary>LDM configs are a few KB; anything past this is not one.</summary>
    public const int MaxFileBytes = 1 << 20;
    private const int MaxNesting = 64, MaxYamlEvents = 100_000;

    public static LdmYamlConfig Load(string path)
    {
        if (!File.Exists(path)) throw new SdLoraException($"{path}: config file not found; check the config path");
        if (new FileInfo(path).Length > MaxFileBytes)
            throw new SdLoraException($"{path}: {new FileInfo(path).Length:N0} bytes is far too large for an LDM config (they are a few KB); pass a file like v1-inference.yaml");
        return Parse(File.ReadAllText(path), path);
    }

    public static LdmYamlConfig Parse(string text, string file)
    {
        var root = LoadYaml(text, file);
        var model = At(root, "model.params") as YamlMappingNode
            ?? throw new SdLoraException($"{file}: has no 'model: params:' section, so it is not an LDM model config; pass a file like v1-inference.yaml");
        var unetParams = At(model, "unet_config.params") as YamlMappingNode
            ?? throw new SdLoraException($"{file}: has no 'unet_config: params:' section; pass an LDM config like v1-inference.yaml");
        var dd = At(model, "first_stage_config.params.ddconfig") as YamlMappingNode
            ?? throw new SdLoraException($"{file}: has no 'first_stage_config: params: ddconfig:' section; pass an LDM config like v1-inference.yaml");

        double? Num(YamlMappingNode d, string k) => Number(At(d, k));
        int? Int(YamlMappingNode d, string k) => Num(d, k) is { } v ? (int)v : null;

        string prediction = Text(At(model, "parameterization")) == "v" ? "v_prediction" : "epsilon";

        // UNet: level i works at 2^i times downsampled resolution and has attention when that factor is listed.
        int modelChannels = Int(unetParams, "model_channels") ?? 320;
        var mult = Ints(At(unetParams, "channel_mult")) ?? [1, 2, 4, 4];
        var attnRes = Ints(At(unetParams, "attention_resolutions")) ?? [4, 2, 1];
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
            UseLinearProjection: Bool(At(unetParams, "use_linear_in_transformer")) ?? false,
            SampleSize: Int(model, "image_size") ?? 64,
            PredictionType: prediction);

        int ch = Int(dd, "ch") ?? 128;
        var vaeMult = Ints(At(dd, "ch_mult")) ?? [1, 2, 4, 4];
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

        return new LdmYamlConfig(unet, vae, ClipFromHeader(text, file), schedule, Text(At(model, "cond_stage_config.target")));
    }

    private static YamlMappingNode LoadYaml(string text, string file)
    {
        CheckShape(text, file);
        var stream = new YamlStream();
        try { stream.Load(new StringReader(text)); }
        catch (YamlException e) { throw NotYaml(file, e.Start.Line, e.Message); }
        if (stream.Documents.Count == 0) return new YamlMappingNode();
        return stream.Documents[0].RootNode as YamlMappingNode
            ?? throw new SdLoraException($"{file}: the YAML's top level is not a mapping; pass an LDM config such as v1-inference.yaml");
    }

    /// <summary>Walks the event stream (no tree) and refuses nesting or size no LDM config has, and broken YAML.</summary>
    private static void CheckShape(string text, string file)
    {
        var parser = new Parser(new StringReader(text));
        int depth = 0, events = 0, line = 1;
        try
        {
            while (parser.MoveNext())
            {
                line = (int)parser.Current!.End.Line;
                if (++events > MaxYamlEvents)
                    throw new SdLoraException($"{file}: more than {MaxYamlEvents:N0} YAML nodes, far more than an LDM config has; pass a file like v1-inference.yaml");
                if (parser.Current is MappingStart or SequenceStart)
                {
                    if (++depth > MaxNesting)
                        throw new SdLoraException($"{file}: line {line}: YAML nested more than {MaxNesting} levels deep, which no LDM config is; pass a file like v1-inference.yaml");
                }
                else if (parser.Current is MappingEnd or SequenceEnd) depth--;
            }
        }
        catch (YamlException e) { throw NotYaml(file, e.Start.Line, e.Message); }
        // YamlDotNet reports some malformed flow collections this way instead of as a YamlException.
        catch (InvalidOperationException) { throw NotYaml(file, line, "a [ ] or { } collection is not closed properly"); }
    }

    private static SdLoraException NotYaml(string file, long line, string problem) =>
        new($"{file}: line {line}: not valid YAML ({problem.Split('\n')[0].TrimEnd('.')}); sdlora reads LDM config YAML (like v1-inference.yaml) — check the file");

    /// <summary>The node at a dotted path (<c>model.params.unet_config.params</c>), or null.</summary>
    private static YamlNode? At(YamlNode? node, string path)
    {
        foreach (var key in path.Split('.'))
        {
            if (node is not YamlMappingNode map || !map.Children.TryGetValue(new YamlScalarNode(key), out node)) return null;
        }
        return node;
    }

    /// <summary>A scalar's text; null for anything else and for YAML's null (<c>~</c>, <c>null</c>, empty).</summary>
    private static string? Text(YamlNode? node) =>
        node is YamlScalarNode { Value: { } v } s && !(s.Style == ScalarStyle.Plain && v is "" or "~" or "null" or "Null" or "NULL") ? v : null;

    private static double? Number(YamlNode? node) =>
        Text(node) is { } s && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : null;

    private static bool? Bool(YamlNode? node) => Text(node)?.ToLowerInvariant() switch
    {
        "true" or "yes" or "on" => true,
        "false" or "no" or "off" => false,
        _ => null,
    };

    private static int[]? Ints(YamlNode? node) =>
        node is YamlSequenceNode seq && seq.Children.All(c => Number(c) is not null) ? seq.Children.Select(c => (int)Number(c)!.Value).ToArray() : null;

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
