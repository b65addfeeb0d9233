using SdLora.IO;
using SdLora.IO.Pickle;
using SdLora.Models;
using static TorchSharp.torch;

namespace SdLora.Checkpoints;

/// <summary>
/// A Stable Diffusion 1.x model on disk — an LDM single file (<c>.safetensors</c> / <c>.ckpt</c>) or a diffusers
/// folder — presented as configs plus three lazy tensor sources in diffusers/transformers names, ready for
/// <see cref="ModuleWeights.Load"/>. LDM names are mapped (and the VAE's 1x1-conv attention weights reshaped)
/// on the fly; EMA copies, schedule buffers and <c>position_ids</c> are left out.
/// </summary>
public sealed class StableDiffusionCheckpoint : IDisposable
{
    private readonly List<IDisposable> _owned;

    public string Path { get; }
    public CheckpointLayout Layout { get; }
    public FamilyDetection Detection { get; }
    public ModelFamily Family => Detection.Family;
    public UNetConfig UNetConfig { get; }
    public AutoencoderKLConfig AutoencoderKLConfig { get; }
    public ClipTextConfig ClipTextConfig { get; }
    public NoiseScheduleSettings Schedule { get; }
    /// <summary>Where the dims came from: "diffusers config.json", "YAML PATH" or "tensor shapes".</summary>
    public string ConfigSource { get; }
    public ITensorSource UNetWeights { get; }
    public ITensorSource VaeWeights { get; }
    public ITensorSource TextEncoderWeights { get; }
    /// <summary>The diffusers <c>tokenizer/</c> folder, when the checkpoint has one (LDM files use the shipped CLIP vocabulary).</summary>
    public string? TokenizerDir { get; }
    /// <summary>Names in the file that no part reads (EMA weights, schedule buffers, position_ids, ...). Empty for diffusers folders.</summary>
    public IReadOnlyList<string> IgnoredKeys { get; }
    /// <summary>The raw file (LDM names) for single files; null for folders.</summary>
    public ITensorSource? RawSource { get; }

    private StableDiffusionCheckpoint(string path, CheckpointLayout layout, FamilyDetection detection, UNetConfig unet, AutoencoderKLConfig vae, ClipTextConfig clip,
        NoiseScheduleSettings schedule, string configSource, ITensorSource u, ITensorSource v, ITensorSource t, string? tokenizer, IReadOnlyList<string> ignored,
        ITensorSource? raw, List<IDisposable> owned)
    {
        Path = path; Layout = layout; Detection = detection; UNetConfig = unet; AutoencoderKLConfig = vae; ClipTextConfig = clip; Schedule = schedule;
        ConfigSource = configSource; UNetWeights = u; VaeWeights = v; TextEncoderWeights = t; TokenizerDir = tokenizer; IgnoredKeys = ignored; RawSource = raw; _owned = owned;
    }

    public ITensorSource WeightsOf(ModelPart part) => part switch
    {
        ModelPart.UNet => UNetWeights,
        ModelPart.Vae => VaeWeights,
        _ => TextEncoderWeights,
    };

    /// <summary>
    /// Opens an SD1.x checkpoint. <paramref name="configYaml"/> (or <c>NAME.yaml</c> beside a single file) supplies the
    /// dims of an LDM file; without it they are inferred from tensor shapes. Anything but a complete SD1.x model is
    /// refused with a message that says what the file is.
    /// </summary>
    public static StableDiffusionCheckpoint Open(string path, string? configYaml = null)
    {
        if (Directory.Exists(path)) return OpenDiffusers(path);
        if (!File.Exists(path)) throw new SdLoraException($"{path}: no such file or folder; pass a .safetensors/.ckpt file or a diffusers model folder");
        var raw = OpenTensorFile(path);
        try
        {
            var detection = ModelFamilyDetector.DetectSingleFile(raw);
            if (!detection.IsSupported) throw new SdLoraException(ModelFamilyDetector.UnsupportedMessage(path, detection));
            return OpenLdm(path, raw, detection, configYaml);
        }
        catch
        {
            (raw as IDisposable)?.Dispose();
            throw;
        }
    }

    /// <summary>Opens a single tensor file by its content, not its extension (see <see cref="TensorFiles.Open"/>).</summary>
    public static ITensorSource OpenTensorFile(string path) => TensorFiles.Open(path);

    /// <summary>The YAML used for an LDM file: the given one, else <c>NAME.yaml</c> beside the checkpoint, else none.</summary>
    public static string? FindYaml(string checkpointPath, string? configYaml)
    {
        if (configYaml != null) return configYaml;
        var beside = System.IO.Path.ChangeExtension(checkpointPath, ".yaml");
        return File.Exists(beside) ? beside : null;
    }

    private static StableDiffusionCheckpoint OpenLdm(string path, ITensorSource raw, FamilyDetection detection, string? configYaml)
    {
        var yamlPath = FindYaml(path, configYaml);
        UNetConfig unet;
        AutoencoderKLConfig vae;
        ClipTextConfig clip;
        NoiseScheduleSettings schedule;
        string configSource;
        var text = TextSource(raw);
        if (yamlPath != null)
        {
            var yaml = LdmYamlConfig.Load(yamlPath);
            if (yaml.CondStageTarget is { } target && target.Contains("OpenCLIP", StringComparison.Ordinal))
                throw new SdLoraException($"{yamlPath}: describes a Stable Diffusion 2.x model ({target}); sdlora supports Stable Diffusion 1.x only; pass an SD1.x config such as v1-inference.yaml");
            (unet, vae, clip, schedule, configSource) = (yaml.UNet, yaml.Vae, yaml.TextEncoder, yaml.Schedule, "YAML " + yamlPath);
        }
        else
        {
            (unet, vae, clip, schedule, configSource) = (ConfigFromShapes.UNet(raw), ConfigFromShapes.Vae(raw), ConfigFromShapes.ClipText(text), NoiseScheduleSettings.StableDiffusion15, "tensor shapes");
            unet = unet with { SampleSize = UNetConfig.StableDiffusion15.SampleSize };
        }

        var parts = new Dictionary<ModelPart, List<(string, string, long[]?)>> { [ModelPart.UNet] = [], [ModelPart.Vae] = [], [ModelPart.TextEncoder] = [] };
        var ignored = new List<string>();
        foreach (var key in raw.Keys)
        {
            if (!LdmKeyMap.TryLdmKeyToDiffusers(key, unet, vae, out var part, out var name)) { ignored.Add(key); continue; }
            long[]? reshape = null;
            if (part == ModelPart.Vae && LdmKeyMap.IsVaeAttentionProjectionWeight(name))
            {
                var s = raw.ShapeOf(key);
                if (s.Length == 4) reshape = [s[0], s[1]];
            }
            parts[part].Add((name, key, reshape));
        }
        ITensorSource Mapped(ModelPart p, string what) => new MappedTensorSource(raw, parts[p], $"{path} ({what})");
        return new StableDiffusionCheckpoint(path, CheckpointLayout.LdmSingleFile, detection, unet, vae, clip, schedule, configSource,
            Mapped(ModelPart.UNet, "UNet"), Mapped(ModelPart.Vae, "VAE"), Mapped(ModelPart.TextEncoder, "text encoder"),
            null, ignored, raw, raw is IDisposable d ? [d] : []);
    }

    /// <summary>The text-encoder tensors of an LDM file in transformers names (for shape inference).</summary>
    private static ITensorSource TextSource(ITensorSource raw) =>
        new MappedTensorSource(raw, raw.Keys
            .Where(k => k.StartsWith(LdmKeyMap.TextEncoderPrefix, StringComparison.Ordinal))
            .Select(k => (LdmKeyMap.TextModulePathLdmToTransformers(k[LdmKeyMap.TextEncoderPrefix.Length..]), k))
            .Where(x => x.Item1 != null)
            .Select(x => (x.Item1!, x.k, (long[]?)null)));

    private static StableDiffusionCheckpoint OpenDiffusers(string dir)
    {
        var detection = ModelFamilyDetector.DetectDiffusersFolder(dir);
        if (!detection.IsSupported) throw new SdLoraException(ModelFamilyDetector.UnsupportedMessage(dir, detection));
        var owned = new List<IDisposable>();
        try
        {
            T Config<T>(string sub, string file, Func<string, T> parse)
            {
                var p = System.IO.Path.Combine(dir, sub, file);
                if (!File.Exists(p)) throw new SdLoraException($"{p}: missing; the diffusers folder is incomplete; re-download it");
                try { return parse(File.ReadAllText(p)); }
                catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException)
                {
                    throw new SdLoraException($"{p}: is not a valid config ({e.Message.Split('\n')[0]}); re-download the model folder");
                }
            }
            ITensorSource Weights(string sub, params string[] names)
            {
                foreach (var n in names)
                {
                    var p = System.IO.Path.Combine(dir, sub, n);
                    if (!File.Exists(p)) continue;
                    var src = OpenTensorFile(p);
                    if (src is IDisposable d) owned.Add(d);
                    return src;
                }
                throw new SdLoraException($"{System.IO.Path.Combine(dir, sub)}: has no weight file ({string.Join(", ", names)}); the diffusers folder is incomplete; re-download it");
            }
            string[] Candidates(string stem) => [stem + ".safetensors", stem + ".fp16.safetensors", stem + ".bin", stem + ".fp16.bin"];

            var unet = Config("unet", "config.json", UNetConfig.FromDiffusersJson);
            var vae = Config("vae", "config.json", AutoencoderKLConfig.FromDiffusersJson);
            var clip = Config("text_encoder", "config.json", ClipTextConfig.FromDiffusersJson);
            var schedule = File.Exists(System.IO.Path.Combine(dir, "scheduler", "scheduler_config.json"))
                ? Config("scheduler", "scheduler_config.json", NoiseScheduleSettings.FromDiffusersJson) : NoiseScheduleSettings.StableDiffusion15;
            unet = unet with { PredictionType = schedule.PredictionType };
            var u = Weights("unet", Candidates("diffusion_pytorch_model"));
            var v = Weights("vae", Candidates("diffusion_pytorch_model"));
            var t = new FilteredTensorSource(Weights("text_encoder", Candidates("model").Concat(Candidates("pytorch_model")).ToArray()),
                k => !k.EndsWith("position_ids", StringComparison.Ordinal));
            var tok = System.IO.Path.Combine(dir, "tokenizer");
            return new StableDiffusionCheckpoint(dir, CheckpointLayout.DiffusersFolder, detection, unet, vae, clip, schedule, "diffusers config.json",
                u, v, t, Directory.Exists(tok) ? tok : null, [], null, owned);
        }
        catch
        {
            foreach (var d in owned) d.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
    }
}
