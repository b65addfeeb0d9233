using SdLora.Lora;
using SdLora.Pipelines;

namespace SdLora.Web.Jobs;

/// <summary>One LoRA of a merge, by its name in the LoRA folder.</summary>
public sealed record MergeLora(string Name, double Weight = 1.0);

/// <summary>
/// <c>lora merge</c> as a job: the LoRAs (by name, at their weights) merged into a checkpoint of the models folder,
/// written as a new checkpoint <see cref="Name"/> in the same folder and layout.
/// </summary>
public sealed record MergeArgs(string Name, IReadOnlyList<MergeLora> Loras, string? Model = null, bool Fp16 = true);

public sealed record MergeResult(string Checkpoint, int LayersChanged, IReadOnlyList<string> Unmatched);

public sealed class MergeJob(DataFolders folders, ModelCatalog catalog) : IJobHandler
{
    public const string TypeName = "merge";
    public string Type => TypeName;

    /// <summary>Refuses what would fail later: unknown checkpoint or LoRA, a weight that is not a number, a name that is not a plain new name.</summary>
    public MergeArgs Check(MergeArgs a)
    {
        var source = catalog.Checkpoint(a.Model);
        if (a.Loras is not { Count: > 0 }) throw new ApiException(400, "loras: name at least one LoRA to merge");
        foreach (var l in a.Loras)
        {
            catalog.InspectLora(l.Name);
            if (!double.IsFinite(l.Weight)) throw new ApiException(400, $"loras: weight of '{l.Name}' must be a number");
        }
        var output = OutputPath(a, source);
        if (File.Exists(output) || Directory.Exists(output))
            throw new ApiException(409, $"checkpoint '{Path.GetFileName(output)}' already exists in {folders.Checkpoints}: choose another name");
        return a with { Model = source.Name };
    }

    public object? Run(JobContext context)
    {
        var a = context.Args<MergeArgs>();
        var source = catalog.Checkpoint(a.Model);
        var output = OutputPath(a, source);
        var loras = a.Loras.Select(l => new LoraUse(LoraFolder.Resolve(l.Name, folders.Loras), l.Weight)).ToList();
        context.Progress(new JobProgress("merging", 0, 1));
        Directory.CreateDirectory(folders.Checkpoints);
        var report = LoraCheckpointMerge.Merge(source.Path, loras, output, a.Fp16, overwrite: false,
            new SyncProgress<string>(context.Log), context.Token);
        context.Progress(new JobProgress("merging", 1, 1));
        context.Owns([output]);
        return new MergeResult(Path.GetRelativePath(folders.Checkpoints, output).Replace('\\', '/'), report.LayersChanged,
            report.Matches.SelectMany(m => m.UnmatchedKeys).ToList());
    }

    // A diffusers folder merges into a folder, a single file into a .safetensors file, both inside the checkpoints folder.
    private string OutputPath(MergeArgs a, CheckpointEntry source)
    {
        var name = (a.Name ?? "").Trim();
        if (name.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) name = name[..^".safetensors".Length];
        if (name.Length == 0 || name.Length > 100 || name.Any(c => !(char.IsLetterOrDigit(c) || c is '-' or '_' or '.' or ' ')) || name.StartsWith('.'))
            throw new ApiException(400, $"name '{a.Name}': use letters, digits, '-', '_', '.' and spaces (a new checkpoint's file name)");
        return DataFolders.Inside(folders.Checkpoints, source.IsFolder ? name : name + ".safetensors", "checkpoint", mustExist: false);
    }
}
