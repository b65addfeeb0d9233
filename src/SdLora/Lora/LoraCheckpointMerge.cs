using System.Globalization;
using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Lora;

/// <summary>A LoRA file and the weight to apply it with (<c>path[:weight]</c> on the command line).</summary>
public sealed record LoraWeightSpec(string Path, double Weight = 1.0)
{
    /// <summary>Parses <c>path</c> or <c>path:weight</c> (the part after the last ':' is a weight only when it is a number, so <c>C:\x.safetensors</c> works).</summary>
    public static LoraWeightSpec Parse(string text)
    {
        int colon = text.LastIndexOf(':');
        if (colon > 0 && double.TryParse(text[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var w))
        {
            if (!double.IsFinite(w)) throw new SdLoraException($"LoRA weight in '{text}' is not a finite number; write path:0.8");
            return new LoraWeightSpec(text[..colon], w);
        }
        return new LoraWeightSpec(text);
    }
}

public sealed record LoraMergeReport(string Output, IReadOnlyList<LoraMatchResult> Matches, int LayersChanged);

/// <summary>
/// Merges LoRA files into a checkpoint on disk, tensor by tensor: <c>W' = W + sum_i weight_i * (alpha_i / r_i) * up_i @ down_i</c>
/// computed in fp32 and rounded once to the output dtype. The output keeps the input's layout and key names and is written atomically.
/// </summary>
public static class LoraCheckpointMerge
{
    /// <summary>The diffusers-folder parts a LoRA can change, with their key prefixes.</summary>
    internal static readonly (string Folder, string Prefix)[] DiffusersParts = [("unet", KohyaNames.DiffusersUnetPrefix), ("text_encoder", KohyaNames.DiffusersTextEncoderPrefix)];

    /// <summary>Folder -> <see cref="MergeDiffusersFolder"/>; file -> <see cref="MergeSingleFile"/> with <see cref="LoraModelSource.SingleFileKeyMap"/> (the LDM key-map hook).</summary>
    public static LoraMergeReport Merge(string model, IReadOnlyList<LoraWeightSpec> loras, string output, bool fp16 = false, IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        if (Directory.Exists(model)) return MergeDiffusersFolder(model, loras, output, fp16, progress, cancellation);
        if (!File.Exists(model)) throw new SdLoraException($"{model}: not found; pass a diffusers folder or a .safetensors checkpoint");
        var map = LoraModelSource.SingleFileKeyMap ?? throw new SdLoraException($"{model}: merging into single-file (LDM) checkpoints needs the LDM key map, which this build does not have; convert the model to a diffusers folder first");
        return MergeSingleFile(model, map, loras, output, fp16, progress, cancellation);
    }

    public static LoraMergeReport MergeDiffusersFolder(string modelDir, IReadOnlyList<LoraWeightSpec> loras, string outputDir, bool fp16 = false, IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        if (!File.Exists(Path.Combine(modelDir, "model_index.json")) && !Directory.Exists(Path.Combine(modelDir, "unet")))
            throw new SdLoraException($"{modelDir}: is not a diffusers model folder (no model_index.json or unet/); pass the folder that contains unet/ and text_encoder/");
        CheckOutput(outputDir, isFolder: true);
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
                    if (Directory.Exists(outputDir)) Directory.Delete(outputDir); // empty (checked above)
                    Directory.Move(tmp, outputDir);
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
    public static LoraMergeReport MergeSingleFile(string modelFile, Func<string, string?> fileKeyToDiffusers, IReadOnlyList<LoraWeightSpec> loras, string outputFile, bool fp16 = false, IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        CheckOutput(outputFile, isFolder: false);
        if (Path.GetFullPath(outputFile) == Path.GetFullPath(modelFile)) throw new SdLoraException($"{outputFile}: is the input model; choose a different --out");
        using var file = SafetensorsFile.Open(modelFile);
        var names = file.Entries.Select(e => (Name: fileKeyToDiffusers(e.Name), e.Shape)).Where(x => x.Name is not null).Select(x => (x.Name!, x.Shape));
        using var plan = Plan(names, loras);
        progress?.Report($"writing {outputFile}");
        WriteMerged(file, fileKeyToDiffusers, plan, outputFile, fp16, cancellation);
        return new LoraMergeReport(outputFile, plan.Matches, plan.Deltas.Count);
    }

    private sealed class MergePlan : IDisposable
    {
        public required List<LoraFile> Files { get; init; }
        public required List<LoraMatchResult> Matches { get; init; }
        /// <summary>diffusers parameter name -> the LoRA modules (and factor = weight * alpha / rank) that change it.</summary>
        public required Dictionary<string, List<(LoraModuleWeights Module, double Factor)>> Deltas { get; init; }
        public void Dispose() { foreach (var f in Files) f.Dispose(); }
    }

    private static MergePlan Plan(IEnumerable<(string Name, long[] Shape)> parameters, IReadOnlyList<LoraWeightSpec> loras)
    {
        if (loras.Count == 0) throw new SdLoraException("no LoRA given; pass --lora FILE[:WEIGHT] at least once");
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
                    list.Add((m, spec.Weight * (m.Alpha ?? m.Rank) / m.Rank));
                }
            }
            return plan;
        }
        catch { plan.Dispose(); throw; }
    }

    private static void WriteMerged(SafetensorsFile file, Func<string, string?> toDiffusers, MergePlan plan, string outPath, bool fp16, CancellationToken cancellation)
    {
        var layout = file.Entries.Select(e => new TensorLayout(e.Name, OutputType(e.ScalarType, fp16), e.Shape)).ToList();
        var metadata = new Dictionary<string, string>(file.Metadata);
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

    private static void CheckOutput(string output, bool isFolder)
    {
        if (isFolder && File.Exists(output)) throw new SdLoraException($"{output}: is a file; the output of a diffusers-folder merge is a folder — choose a new folder name");
        if (isFolder && Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
            throw new SdLoraException($"{output}: already exists and is not empty; choose a new --out or remove it");
        if (!isFolder && Directory.Exists(output)) throw new SdLoraException($"{output}: is a folder; give a .safetensors file name as --out");
    }

    private static void CopyTree(string from, string to, HashSet<string> skip)
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
