using System.Text.Json;
using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Lora;

/// <summary>How a LoRA file names its tensors.</summary>
public enum LoraDialect
{
    /// <summary><c>lora_unet_*/lora_te_*.lora_down.weight / .lora_up.weight / .alpha</c> (kohya sd-scripts, A1111, ComfyUI).</summary>
    Kohya,
    /// <summary><c>unet.* / text_encoder.*</c> with <c>lora_A/lora_B</c> (PEFT) or <c>lora.down/lora.up</c> (diffusers).</summary>
    Diffusers,
}

/// <summary>One adapted module as stored in a file: key stem, factors (fp32, CPU) and alpha (null = rank).</summary>
public sealed record LoraModuleWeights(string Stem, string DownKey, string UpKey, Tensor Down, Tensor Up, double? Alpha)
{
    public int Rank => (int)Down.shape[0];
    public bool IsConv => Down.shape.Length == 4;
    /// <summary>Part from the key prefix (kohya <c>lora_unet_/lora_te_</c>, diffusers <c>unet./text_encoder.</c>), or null when the key has neither.</summary>
    public LoraPart? Part =>
        Stem.StartsWith(KohyaNames.UnetPrefix, StringComparison.Ordinal) || Stem.StartsWith(KohyaNames.DiffusersUnetPrefix, StringComparison.Ordinal) ? LoraPart.Unet
        : Stem.StartsWith(KohyaNames.TextEncoderPrefix, StringComparison.Ordinal) || Stem.StartsWith(KohyaNames.DiffusersTextEncoderPrefix, StringComparison.Ordinal) ? LoraPart.TextEncoder
        : null;
    /// <summary>The kohya name for this module (diffusers paths converted textually; that direction is unambiguous).</summary>
    public string KohyaName => Stem.StartsWith("lora_", StringComparison.Ordinal) ? Stem : KohyaNames.FromDiffusersKeyPath(Stem) ?? "lora_" + Stem.Replace('.', '_');
}

/// <summary>
/// A LoRA file read into memory and normalised: every module's down/up/alpha, whatever the dialect, validated
/// (no NaN/Inf, not a full checkpoint, not SDXL/SD2). Keys that belong to no module are listed in <see cref="UnknownKeys"/>.
/// </summary>
public sealed class LoraFile : IDisposable
{
    public string Path { get; }
    public LoraDialect Dialect { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public IReadOnlyList<LoraModuleWeights> Modules { get; }
    /// <summary>Tensor keys that are not part of a recognised down/up/alpha triple (LyCORIS, DoRA scales, ...).</summary>
    public IReadOnlyList<string> UnknownKeys { get; }
    public long FileSize { get; }
    /// <summary>dtype code of the factors as stored (F16, F32, BF16).</summary>
    public string StoredDType { get; }

    private LoraFile(string path, LoraDialect dialect, IReadOnlyDictionary<string, string> metadata, List<LoraModuleWeights> modules, List<string> unknown, long size, string dtype)
    {
        Path = path; Dialect = dialect; Metadata = metadata; Modules = modules; UnknownKeys = unknown; FileSize = size; StoredDType = dtype;
    }

    // Key suffixes of each dialect: (down suffix, up suffix). The stem is the key without the suffix.
    private static readonly (string Down, string Up)[] FactorSuffixes =
    [
        (".lora_down.weight", ".lora_up.weight"),            // kohya
        (".lora_A.weight", ".lora_B.weight"),                // PEFT / diffusers >= 0.22
        (".lora.down.weight", ".lora.up.weight"),            // diffusers LoRACompatibleLinear
        (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"), // diffusers text-encoder (0.1x)
        ("_lora.down.weight", "_lora.up.weight"),            // diffusers attention processors (attn1.processor.to_q_lora)
    ];

    /// <summary>Reads and validates a LoRA safetensors file. <paramref name="alphaOverride"/> sets alpha for files that carry none (PEFT).</summary>
    public static LoraFile Read(string path, double? alphaOverride = null)
    {
        using var file = SafetensorsFile.Open(path);
        var keys = file.Keys.ToList();
        var metadata = file.Metadata;
        CheckFamily(path, keys, metadata);

        var modules = new List<LoraModuleWeights>();
        var used = new HashSet<string>(StringComparer.Ordinal);
        var peftAlpha = alphaOverride ?? ReadPeftAlpha(path, metadata);
        foreach (var key in keys)
        {
            foreach (var (downSuffix, upSuffix) in FactorSuffixes)
            {
                if (!key.EndsWith(downSuffix, StringComparison.Ordinal)) continue;
                var rawStem = key[..^downSuffix.Length];
                var upKey = rawStem + upSuffix;
                if (!file.Contains(upKey))
                    throw new SdLoraException($"{path}: '{key}' has no matching '{upKey}'; the file is incomplete — re-export it");
                var stem = NormaliseStem(rawStem);
                var down = LoadChecked(file, key);
                var up = LoadChecked(file, upKey);
                CheckFactorShapes(path, key, upKey, down, up);
                double? alpha = null;
                var alphaKey = rawStem + ".alpha";
                if (file.Contains(alphaKey))
                {
                    using var a = LoadChecked(file, alphaKey);
                    if (a.NumberOfElements != 1) throw new SdLoraException($"{path}: '{alphaKey}' should be a single number but has shape [{string.Join(",", a.shape)}]; the file is not a valid LoRA");
                    alpha = a.to(ScalarType.Float64).item<double>();
                    used.Add(alphaKey);
                }
                else if (peftAlpha is { } pa) alpha = pa;
                modules.Add(new LoraModuleWeights(stem, key, upKey, down, up, alpha));
                used.Add(key); used.Add(upKey);
                break;
            }
        }
        // Bundled word embeddings are not part of the network (LoraEmbeddings reads them).
        var unknown = keys.Where(k => !used.Contains(k) && !LoraEmbeddings.IsBundleKey(k)).ToList();
        if (modules.Count == 0)
        {
            foreach (var m in modules) { m.Down.Dispose(); m.Up.Dispose(); }
            if (LooksLikeFullCheckpoint(keys))
                throw new SdLoraException($"{path}: is a full model checkpoint ({keys.Count} tensors, e.g. '{keys[0]}'), not a LoRA; pass it as the model (--model), not as a LoRA");
            var hint = unknown.Any(k => k.Contains("hada_") || k.Contains("lokr_")) ? " (it looks like a LyCORIS LoHa/LoKr file, which sdlora does not read)" : "";
            throw new SdLoraException($"{path}: contains no LoRA tensors (no '*.lora_down.weight' / '*.lora_A.weight' keys){hint}; is it a LoRA file?");
        }
        var dialect = modules.Any(m => m.Stem.StartsWith("lora_", StringComparison.Ordinal)) ? LoraDialect.Kohya : LoraDialect.Diffusers;
        var dtype = file[modules[0].DownKey].DType;
        return new LoraFile(path, dialect, metadata, modules, unknown, new FileInfo(path).Length, dtype);
    }

    /// <summary>PEFT/diffusers keys -> stem in the <c>unet.</c>/<c>text_encoder.</c> + module-path form.</summary>
    private static string NormaliseStem(string stem)
    {
        if (stem.StartsWith("base_model.model.", StringComparison.Ordinal)) stem = stem["base_model.model.".Length..];
        // diffusers attention-processor format: ...attn1.processor.to_q_lora -> ...attn1.to_q ; to_out_lora -> to_out.0
        int p = stem.IndexOf(".processor.", StringComparison.Ordinal);
        if (p >= 0)
        {
            var proj = stem[(p + ".processor.".Length)..];
            if (proj.EndsWith("_lora", StringComparison.Ordinal)) proj = proj[..^"_lora".Length];
            stem = stem[..p] + "." + (proj == "to_out" ? "to_out.0" : proj);
        }
        return stem;
    }

    private static Tensor LoadChecked(SafetensorsFile file, string key)
    {
        var t = file.Load(key, ScalarType.Float32);
        if (!torch.isfinite(t).all().item<bool>())
        {
            t.Dispose();
            throw new SdLoraException($"{file.Path}: tensor '{key}' contains NaN or Inf values; the LoRA is broken (training diverged?) — use an earlier checkpoint");
        }
        return t;
    }

    private static void CheckFactorShapes(string path, string downKey, string upKey, Tensor down, Tensor up)
    {
        bool ok = (down.dim() == 2 && up.dim() == 2) || (down.dim() == 4 && up.dim() == 4 && up.shape[2] == 1 && up.shape[3] == 1);
        if (!ok || down.shape[0] != up.shape[1])
            throw new SdLoraException($"{path}: '{downKey}' [{string.Join(",", down.shape)}] and '{upKey}' [{string.Join(",", up.shape)}] do not form a LoRA pair (expected down [r,in(,k,k)], up [out,r(,1,1)]); the file is damaged");
    }

    private static void CheckFamily(string path, List<string> keys, IReadOnlyDictionary<string, string> metadata)
    {
        var version = metadata.GetValueOrDefault("ss_base_model_version") ?? "";
        if (version.StartsWith("sdxl", StringComparison.OrdinalIgnoreCase) || keys.Any(k => k.StartsWith("lora_te1_", StringComparison.Ordinal) || k.StartsWith("lora_te2_", StringComparison.Ordinal)))
            throw new SdLoraException($"{path}: is a LoRA for SDXL (ss_base_model_version '{version}', or lora_te1_/lora_te2_ keys); sdlora works with Stable Diffusion 1.x — use an SD 1.x LoRA");
        if (version.StartsWith("sd_v2", StringComparison.OrdinalIgnoreCase) || string.Equals(metadata.GetValueOrDefault("ss_v2"), "True", StringComparison.OrdinalIgnoreCase))
            throw new SdLoraException($"{path}: is a LoRA for Stable Diffusion 2.x (metadata ss_v2 / ss_base_model_version '{version}'); sdlora works with SD 1.x — use an SD 1.x LoRA");
        if (version.Length > 0 && !version.StartsWith("sd_v1", StringComparison.OrdinalIgnoreCase))
            throw new SdLoraException($"{path}: is a LoRA for '{version}' (metadata ss_base_model_version); sdlora works with Stable Diffusion 1.x (sd_v1) — use an SD 1.x LoRA");
    }

    private static bool LooksLikeFullCheckpoint(List<string> keys) =>
        keys.Any(k => k.StartsWith("model.diffusion_model.", StringComparison.Ordinal) || k.StartsWith("first_stage_model.", StringComparison.Ordinal)
                      || k.StartsWith("cond_stage_model.", StringComparison.Ordinal) || k.StartsWith("conditioner.", StringComparison.Ordinal)
                      || k == "conv_in.weight" || k.StartsWith("text_model.embeddings.", StringComparison.Ordinal) || k.StartsWith("encoder.down", StringComparison.Ordinal));

    /// <summary>Alpha for PEFT files: <c>adapter_config.json</c> beside the file (<c>lora_alpha</c>), else null (= rank).</summary>
    private static double? ReadPeftAlpha(string path, IReadOnlyDictionary<string, string> metadata)
    {
        var config = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!, "adapter_config.json");
        if (!File.Exists(config)) return null;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(config));
            return doc.RootElement.TryGetProperty("lora_alpha", out var a) && a.TryGetDouble(out var v) ? v : null;
        }
        catch (JsonException e)
        {
            throw new SdLoraException($"{config}: is not valid JSON ({e.Message.Split('\n')[0]}); fix or remove it");
        }
    }

    public void Dispose()
    {
        foreach (var m in Modules) { m.Down.Dispose(); m.Up.Dispose(); }
    }
}
