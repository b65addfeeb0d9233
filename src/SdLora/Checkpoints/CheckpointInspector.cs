using SdLora.IO;
using SdLora.IO.Pickle;
using SdLora.Models;
using static TorchSharp.torch;

namespace SdLora.Checkpoints;

/// <summary>Tensor and parameter counts of one part of a checkpoint.</summary>
public sealed record PartSummary(string Part, int Tensors, long Parameters);

/// <summary>Everything <c>sdlora model inspect</c> shows about a checkpoint.</summary>
public sealed record CheckpointReport(
    string Path,
    string Layout,
    string Family,
    string Description,
    bool Usable,
    string? WhyNot,
    long FileBytes,
    int TensorCount,
    IReadOnlyDictionary<string, int> DTypeCounts,
    IReadOnlyList<PartSummary> Parts,
    IReadOnlyDictionary<string, int> IgnoredKeyGroups,
    string? ConfigSource,
    UNetConfig? UNet,
    AutoencoderKLConfig? Vae,
    ClipTextConfig? TextEncoder,
    NoiseScheduleSettings? Schedule);

/// <summary>Describes a checkpoint without loading its weights: family, layout, dtypes, parameter counts, what would be ignored.</summary>
public static class CheckpointInspector
{
    public static CheckpointReport Inspect(string path, string? configYaml = null)
    {
        if (Directory.Exists(path)) return InspectFolder(path);
        if (!File.Exists(path)) throw new SdLoraException($"{path}: no such file or folder; pass a .safetensors/.ckpt file or a diffusers model folder");
        var raw = StableDiffusionCheckpoint.OpenTensorFile(path);
        try
        {
            var detection = ModelFamilyDetector.DetectSingleFile(raw);
            var dtypes = DTypeCounts(raw, raw.Keys);
            long bytes = new FileInfo(path).Length;
            int count = raw.Keys.Count();
            if (!detection.IsSupported)
            {
                var parts = new[] { ModelPart.UNet, ModelPart.Vae, ModelPart.TextEncoder }
                    .Select(p => (p, keys: raw.Keys.Where(k => k.StartsWith(LdmKeyMap.PrefixOf(p), StringComparison.Ordinal)).ToList()))
                    .Where(x => x.keys.Count > 0)
                    .Select(x => new PartSummary(PartLabel(x.p), x.keys.Count, x.keys.Sum(k => Elements(raw.ShapeOf(k)))))
                    .ToList();
                return new CheckpointReport(path, "single file", detection.Family.ToString(), detection.Description, false, detection.WhyNot, bytes, count,
                    dtypes, parts, new Dictionary<string, int>(), null, null, null, null, null);
            }
        }
        finally { (raw as IDisposable)?.Dispose(); }

        using var ckpt = StableDiffusionCheckpoint.Open(path, configYaml);
        return Report(ckpt, new FileInfo(path).Length, ckpt.RawSource!.Keys.Count(), DTypeCounts(ckpt.RawSource, ckpt.RawSource.Keys), Groups(ckpt.IgnoredKeys));
    }

    private static CheckpointReport InspectFolder(string dir)
    {
        var detection = ModelFamilyDetector.DetectDiffusersFolder(dir);
        long bytes = Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        if (!detection.IsSupported)
            return new CheckpointReport(dir, "diffusers folder", detection.Family.ToString(), detection.Description, false, detection.WhyNot, bytes, 0,
                new Dictionary<string, int>(), [], new Dictionary<string, int>(), null, null, null, null, null);
        using var ckpt = StableDiffusionCheckpoint.Open(dir);
        var dtypes = new Dictionary<string, int>();
        int count = 0;
        foreach (var part in new[] { ModelPart.UNet, ModelPart.Vae, ModelPart.TextEncoder })
        {
            var src = ckpt.WeightsOf(part);
            foreach (var (k, v) in DTypeCounts(src, src.Keys)) dtypes[k] = dtypes.GetValueOrDefault(k) + v;
            count += src.Keys.Count();
        }
        return Report(ckpt, bytes, count, dtypes, new Dictionary<string, int>());
    }

    private static CheckpointReport Report(StableDiffusionCheckpoint c, long bytes, int count, IReadOnlyDictionary<string, int> dtypes, IReadOnlyDictionary<string, int> ignored)
    {
        var parts = new[] { ModelPart.UNet, ModelPart.Vae, ModelPart.TextEncoder }
            .Select(p => new PartSummary(PartLabel(p), c.WeightsOf(p).Keys.Count(), c.WeightsOf(p).Keys.Sum(k => Elements(c.WeightsOf(p).ShapeOf(k))))).ToList();
        // A file that maps but lacks weights the model needs is not usable either.
        string? whyNot = null;
        foreach (var p in new[] { ModelPart.UNet, ModelPart.Vae, ModelPart.TextEncoder })
        {
            var src = c.WeightsOf(p);
            var missing = ReferenceLayout.Of(p, c.UNetConfig, c.AutoencoderKLConfig, c.ClipTextConfig).Where(x => !src.Contains(x.Name)).Select(x => x.Name).ToList();
            var wrong = ReferenceLayout.Of(p, c.UNetConfig, c.AutoencoderKLConfig, c.ClipTextConfig).Where(x => src.Contains(x.Name) && !src.ShapeOf(x.Name).SequenceEqual(x.Shape)).Select(x => x.Name).ToList();
            if (missing.Count > 0) { whyNot = $"its {PartLabel(p)} lacks {missing.Count} weights (first: {missing[0]}); the file is incomplete"; break; }
            if (wrong.Count > 0) { whyNot = $"its {PartLabel(p)} weight '{wrong[0]}' does not match the config ({c.ConfigSource}); set config to the right LDM YAML"; break; }
        }
        return new CheckpointReport(c.Path, c.Layout == CheckpointLayout.LdmSingleFile ? "LDM single file" : "diffusers folder", c.Family.ToString(), c.Detection.Description,
            whyNot == null, whyNot, bytes, count, dtypes, parts, ignored, c.ConfigSource, c.UNetConfig, c.AutoencoderKLConfig, c.ClipTextConfig, c.Schedule);
    }

    private static string PartLabel(ModelPart p) => p switch { ModelPart.UNet => "UNet", ModelPart.Vae => "VAE", _ => "text encoder" };

    private static long Elements(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>The dtype of a tensor without loading it, where the source can tell.</summary>
    public static string? DTypeName(ITensorSource source, string name) => source switch
    {
        SafetensorsFile f => f[name].DType,
        TorchCheckpoint t => Safetensors.ToCode(t.DTypeOf(name)),
        FilteredTensorSource f => DTypeName(f.Inner, name),
        MappedTensorSource m => DTypeName(m.Inner, m.SourceKeyOf(name)),
        _ => null,
    };

    private static Dictionary<string, int> DTypeCounts(ITensorSource source, IEnumerable<string> keys)
    {
        var counts = new Dictionary<string, int>();
        foreach (var k in keys)
        {
            var d = DTypeName(source, k) ?? LoadedDType(source, k);
            counts[d] = counts.GetValueOrDefault(d) + 1;
        }
        return counts;
    }

    private static string LoadedDType(ITensorSource source, string k)
    {
        using var t = source.Load(k);
        return Safetensors.ToCode(t.dtype);
    }

    /// <summary>Ignored keys grouped by kind (EMA, schedule buffers, position_ids, other).</summary>
    public static Dictionary<string, int> Groups(IEnumerable<string> ignored)
    {
        var groups = new Dictionary<string, int>();
        foreach (var k in ignored)
        {
            string g = k.StartsWith("model_ema.", StringComparison.Ordinal) ? "EMA weights (model_ema.*)"
                : k.EndsWith("position_ids", StringComparison.Ordinal) ? "position_ids buffer"
                : !k.Contains('.') ? "noise-schedule buffers (betas, alphas_cumprod, ...)"
                : "other (" + k.Split('.')[0] + ".*)";
            groups[g] = groups.GetValueOrDefault(g) + 1;
        }
        return groups;
    }
}
