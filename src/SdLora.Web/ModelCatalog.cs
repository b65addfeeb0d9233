using System.Collections.Concurrent;
using System.Text.Json;
using SdLora.Checkpoints;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;

namespace SdLora.Web;

/// <summary>A checkpoint the server offers: its name (path inside the checkpoints folder) and where it lies.</summary>
public sealed record CheckpointEntry(string Name, string Path, bool IsFolder, long Size);

/// <summary>
/// What is in the models folder: checkpoints (<c>checkpoints/</c>: SD1.x single files and diffusers folders), LoRAs
/// (<c>lora/</c>) and the BLIP captioner (<c>blip/</c>); what <c>model inspect</c> / <c>lora inspect</c> say about each;
/// and the A1111 option of which checkpoint is current.
/// </summary>
public sealed class ModelCatalog(DataFolders folders, ServeOptions options)
{
    private static readonly string[] CheckpointExtensions = [".safetensors", ".ckpt"];
    private readonly ConcurrentDictionary<string, (DateTime Stamp, CheckpointReport Report)> _reports = new();
    private readonly object _optionsSync = new();

    public IReadOnlyList<CheckpointEntry> Checkpoints()
    {
        var list = new List<CheckpointEntry>();
        void Scan(string dir, int depth)
        {
            if (!Directory.Exists(dir)) return;
            foreach (var f in Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal))
            {
                if (System.IO.Path.GetFileName(f).StartsWith('.') || !CheckpointExtensions.Contains(System.IO.Path.GetExtension(f).ToLowerInvariant())) continue;
                if (new FileInfo(f).LinkTarget is not null && !Stays(f)) continue;
                list.Add(new CheckpointEntry(Relative(f), f, false, new FileInfo(f).Length));
            }
            foreach (var d in Directory.EnumerateDirectories(dir).Order(StringComparer.Ordinal))
            {
                if (System.IO.Path.GetFileName(d).StartsWith('.') || new DirectoryInfo(d).LinkTarget is not null) continue;
                if (File.Exists(System.IO.Path.Combine(d, "model_index.json")) || Directory.Exists(System.IO.Path.Combine(d, "unet")))
                    list.Add(new CheckpointEntry(Relative(d), d, true, Directory.EnumerateFiles(d, "*", SearchOption.AllDirectories).Sum(x => new FileInfo(x).Length)));
                else if (depth < 2) Scan(d, depth + 1);
            }
        }
        Scan(folders.Checkpoints, 0);
        foreach (var (name, path) in options.ExtraCheckpoints)
            if (list.All(e => e.Name != name) && (File.Exists(path) || Directory.Exists(path)))
                list.Add(new CheckpointEntry(name, path, Directory.Exists(path), 0));
        return list;
    }

    private string Relative(string path) => System.IO.Path.GetRelativePath(folders.Checkpoints, path).Replace('\\', '/');

    private bool Stays(string link)
    {
        var target = new FileInfo(link).ResolveLinkTarget(true)?.FullName ?? link;
        return target.StartsWith(System.IO.Path.GetFullPath(folders.Checkpoints) + System.IO.Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }

    /// <summary>The checkpoint called <paramref name="name"/> (a listed name; A1111's "name [hash]" titles are accepted).</summary>
    public CheckpointEntry Checkpoint(string? name)
    {
        var all = Checkpoints();
        if (string.IsNullOrWhiteSpace(name))
            return Find(CurrentCheckpointName) ?? all.FirstOrDefault()
                ?? throw new ApiException(400, $"no checkpoint in {folders.Checkpoints}: put an SD1.x .safetensors file or diffusers folder there");
        var bare = name.Trim();
        if (bare.EndsWith(']') && bare.LastIndexOf(" [", StringComparison.Ordinal) is > 0 and var i) bare = bare[..i];
        return Find(bare) ?? throw new ApiException(404, $"checkpoint '{name}' not found in the models folder; available: {string.Join(", ", all.Select(c => c.Name))}");

        CheckpointEntry? Find(string? n) => n is null ? null
            : all.FirstOrDefault(c => c.Name == n)
              ?? all.FirstOrDefault(c => System.IO.Path.GetFileNameWithoutExtension(c.Name) == n);
    }

    public CheckpointReport Inspect(CheckpointEntry entry)
    {
        var stamp = entry.IsFolder ? Directory.GetLastWriteTimeUtc(entry.Path) : File.GetLastWriteTimeUtc(entry.Path);
        if (_reports.TryGetValue(entry.Path, out var cached) && cached.Stamp == stamp) return cached.Report;
        var report = CheckpointInspector.Inspect(entry.Path);
        _reports[entry.Path] = (stamp, report);
        return report;
    }

    public IReadOnlyList<LoraFolderEntry> Loras() => LoraFolder.List(folders.Loras);

    public LoraInspection InspectLora(string name)
    {
        try { LoraFolder.CheckName(name); }
        catch (SdLoraException e) { throw new ApiException(400, e.Message); }
        var entry = Loras().FirstOrDefault(l => l.Name == name) ?? throw new ApiException(404, $"LoRA '{name}' not found in {folders.Loras}");
        return LoraInspector.Inspect(entry.Path);
    }

    public bool HasBlip => File.Exists(System.IO.Path.Combine(folders.Blip, "config.json")) || Directory.Exists(folders.Blip) && Directory.EnumerateFiles(folders.Blip, "*.pth").Any();

    /// <summary>A1111's <c>sd_model_checkpoint</c>: the checkpoint jobs use when a request names none.</summary>
    public string? CurrentCheckpointName
    {
        get
        {
            lock (_optionsSync)
            {
                if (!File.Exists(folders.OptionsFile)) return null;
                try { return JsonDocument.Parse(File.ReadAllText(folders.OptionsFile)).RootElement.GetProperty("sd_model_checkpoint").GetString(); }
                catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException) { return null; }
            }
        }
        set
        {
            var entry = Checkpoint(value);
            lock (_optionsSync)
                AtomicFile.WriteAllText(folders.OptionsFile, JsonSerializer.Serialize(new Dictionary<string, string> { ["sd_model_checkpoint"] = entry.Name }));
        }
    }
}
