using System.Globalization;
using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Lora;

public sealed record LoraMergeReport(string Output, IReadOnlyList<LoraMatchResult> Matches, int LayersChanged);

/// <summary>
/// Merges LoRA files into a checkpoint on disk, tensor by tensor: <c>W' = W + sum_i weight_i * (alpha_i / r_i) * up_i @ down_i</c>
/// computed in fp32 and rounded once to the output dtype. The output keeps the input's layout and key names and is written atomically.
/// </summary>
public static class LoraCheckpointMerge
{
    /// <summary>The diffusers-folder parts a LoRA can change, with their key prefixes.</summary>
    internal static readonly (string Folder, string Prefix)[] DiffusersParts = [("unet", KohyaNames.DiffusersUnetPrefix), ("text_encoder", KohyaNames.DiffusersTextEncoderPrefix)];

    /// <summary>
    /// Folder -> <see cref="MergeDiffusersFolder"/>; file (.safetensors or .ckpt) -> <see cref="MergeSingleFile"/> with
    /// <see cref="LoraModelSource.LdmFileKeyToPrefixed"/> (SD1.x's LDM key map). The output is checked first (<see cref="OutputPath"/>):
    /// never one of the inputs, never an existing output unless <paramref name="overwrite"/>.
    /// </summary>
    public static LoraMergeReport Merge(string model, IReadOnlyList<LoraUse> loras, string output, bool fp16 = false, bool overwrite = false, IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        if (Directory.Exists(model)) return MergeDiffusersFolder(model, loras, output, fp16, overwrite, progress, cancellation);
        if (!File.Exists(model)) throw new SdLoraException($"{model}: not found; pass a diffusers folder or a .safetensors/.ckpt checkpoint");
        return MergeSingleFile(model, LoraModelSource.LdmFileKeyToPrefixed, loras, output, fp16, overwrite, progress, cancellation);
    }

    private static List<string> Inputs(string model, IReadOnlyList<LoraUse> loras) => [model, .. loras.Select(l => l.Path)];

    public static LoraMergeReport MergeDiffusersFolder(string modelDir, IReadOnlyList<LoraUse> loras, string outputDir, bool fp16 = false, bool overwrite = false, IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        if (!File.Exists(Path.Combine(modelDir, "model_index.json")) && !Directory.Exists(Path.Combine(modelDir, "unet")))
            throw new SdLoraException($"{modelDir}: is not a diffusers model folder (no model_index.json or unet/); pass the folder that contains unet/ and text_encoder/");
        outputDir = OutputPath.CheckReplacedFolder(outputDir, overwrite, Inputs(modelDir, loras), "merged model folder");
        var files = new List<(string Path, string Prefix)>();
        foreach (var (folder, prefix) in DiffusersParts)
        {
            var dir = Path.Combine(modelDir, folder);
            if (Directory.Exists(dir)) files.AddRange(Directory.GetFiles(dir, "*.safetensors").Order(StringComparer.Ordinal).Select(f => (f, prefix)));
        }
        if (files.Count == 0) throw new SdLoraException($"{modelDir}: has no unet/*.safetensors or text_encoder/*.safetensors weights; sdlora reads safetensors only");

        var opened = files.Select(f => (File: SafetensorsFile.Open(f.Path), f.Prefix)).ToList();
        try
        {
            var plan = Plan(opened.SelectMany(o => o.File.Entries.Select(e => (o.Prefix + e.Name, e.Shape))), loras);
            try
            {
                var tmp = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(outputDir))!, "." + Path.GetFileName(Path.GetFullPath(outputDir)) + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp");
                try
                {
                    CopyTree(modelDir, tmp, skip: files.Select(f => Path.GetRelativePath(modelDir, f.Path)).ToHashSet());
                    foreach (var (file, prefix) in opened)
                    {
                        var rel = Path.GetRelativePath(modelDir, file.Path);
                        progress?.Report($"writing {rel}");
                        WriteMerged(file, key => prefix + key, plan, Path.Combine(tmp, rel), fp16, cancellation);
                    }
                    if (fp16) ConvertOtherWeights(modelDir, tmp, files.Select(f => f.Path).ToHashSet(), cancellation);
                    AtomicFile.ReplaceFolder(tmp, outputDir);
                }
                catch
                {
                    try { if (Directory.Exists(tmp)) Directory.Delete(tmp, true); } catch (IOException) { }
                    throw;
                }
                return new LoraMergeReport(outputDir, plan.Matches, plan.Deltas.Count);
            }
            finally { plan.Dispose(); }
        }
        finally { foreach (var (f, _) in opened) f.Dispose(); }
    }

    /// <param name="fileKeyToDiffusers">file key -> <c>unet.X.weight</c> / <c>text_encoder.X.weight</c>, or null.</param>
    /// <summary>Merges into a single-file checkpoint (.safetensors, or a .ckpt read through the restricted unpickler); the output is always safetensors.</summary>
    public static LoraMergeReport MergeSingleFile(string modelFile, Func<string, string?> fileKeyToDiffusers, IReadOnlyList<LoraUse> loras, string outputFile, bool fp16 = false, bool overwrite = false, IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        if (!string.Equals(Path.GetExtension(outputFile), ".safetensors", StringComparison.OrdinalIgnoreCase))
            throw new SdLoraException($"{outputFile}: sdlora writes merged single-file models as safetensors; name the output NAME.safetensors");
        OutputPath.CheckFile(outputFile, overwrite, Inputs(modelFile, loras), "merged model");
        var file = TensorFiles.Open(modelFile);
        try
        {
            var names = file.Keys.Select(k => (Name: fileKeyToDiffusers(k), Shape: file.ShapeOf(k))).Where(x => x.Name is not null).Select(x => (x.Name!, x.Shape));
            using var plan = Plan(names, loras);
            progress?.Report($"writing {outputFile}");
            WriteMerged(file, fileKeyToDiffusers, plan, outputFile, fp16, cancellation);
            return new LoraMergeReport(outputFile, plan.Matches, plan.Deltas.Count);
        }
        finally { (file as IDisposable)?.Dispose(); }
    }

    private sealed class MergePlan : IDisposable
    {
        public required List<LoraFile> Files { get; init; }
        public required List<LoraMatchResult> Matches { get; init; }
        /// <summary>diffusers parameter name -> the LoRA modules (and factor = weight * alpha / rank) that change it.</summary>
        public required Dictionary<string, List<(LoraModuleWeights Module, double Factor)>> Deltas { get; init; }
        public void Dispose() { foreach (var f in Files) f.Dispose(); }
    }

    private static MergePlan Plan(IEnumerable<(string Name, long[] Shape)> parameters, IReadOnlyList<LoraUse> loras)
    {
        if (loras.Count == 0) throw new SdLoraException("no LoRA given: name at least one LoRA file (FILE[:WEIGHT])");
        var index = LoraTargetIndex.FromParameters(parameters);
        var plan = new MergePlan { Files = [], Matches = [], Deltas = new(StringComparer.Ordinal) };
        try
        {
            foreach (var spec in loras)
            {
                var lora = LoraFile.Read(spec.Path);
                plan.Files.Add(lora);
                var match = LoraMatcher.Match(lora, index);
                plan.Matches.Add(match);
                foreach (var (m, t) in match.Matched)
                {
                    var key = t.PrefixedPath + ".weight";
                    if (!plan.Deltas.TryGetValue(key, out var list)) plan.Deltas[key] = list = [];
                    list.Add((m, spec.WeightFor(isUNet: key.StartsWith(KohyaNames.DiffusersUnetPrefix, StringComparison.Ordinal)) * (m.Alpha ?? m.Rank) / m.Rank));
                }
            }
            return plan;
        }
        catch { plan.Dispose(); throw; }
    }

    private static void WriteMerged(ITensorSource file, Func<string, string?> toDiffusers, MergePlan plan, string outPath, bool fp16, CancellationToken cancellation)
    {
        var layout = file.Keys.Select(k => new TensorLayout(k, OutputType(TensorFiles.DTypeOf(file, k), fp16), file.ShapeOf(k))).ToList();
        var metadata = new Dictionary<string, string>(TensorFiles.MetadataOf(file));
        if (plan.Files.Count > 0)
            metadata["sdlora_merged_loras"] = string.Join(", ", plan.Files.Zip(plan.Matches).Select(p => Path.GetFileName(p.First.Path)));
        SafetensorsStreamWriter.Write(outPath, layout, t =>
        {
            var w = file.Load(t.Name);
            var name = toDiffusers(t.Name);
            if (name is not null && plan.Deltas.TryGetValue(name, out var deltas))
            {
                var acc = w.to(ScalarType.Float32);
                foreach (var (m, factor) in deltas)
                    acc = acc.add_(m.Up.flatten(1).mm(m.Down.flatten(1)).reshape(w.shape), alpha: factor);
                w = acc;
            }
            return w.to(t.DType);
        }, metadata, cancellation);
    }

    private static ScalarType OutputType(ScalarType t, bool fp16) =>
        fp16 && (t == ScalarType.Float32 || t == ScalarType.Float64 || t == ScalarType.BFloat16) ? ScalarType.Float16 : t;

    internal static void CopyTree(string from, string to, HashSet<string> skip)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            var rel = Path.GetRelativePath(from, f);
            if (skip.Contains(rel)) continue;
            var dest = Path.Combine(to, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(dest)!);
            File.Copy(f, dest);
        }
        foreach (var rel in skip) Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(to, rel))!);
    }

    /// <summary>With fp16, the other parts' weights (vae/...) are converted too, so the whole folder is fp16.</summary>
    private static void ConvertOtherWeights(string from, string to, HashSet<string> done, CancellationToken cancellation)
    {
        foreach (var f in Directory.EnumerateFiles(from, "*.safetensors", SearchOption.AllDirectories))
        {
            if (done.Contains(f)) continue;
            using var file = SafetensorsFile.Open(f);
            var layout = file.Entries.Select(e => new TensorLayout(e.Name, OutputType(e.ScalarType, true), e.Shape)).ToList();
            SafetensorsStreamWriter.Write(Path.Combine(to, Path.GetRelativePath(from, f)), layout, t => file.Load(t.Name, t.DType), file.Metadata, cancellation);
        }
    }
}
