using System.Text.Json;
using SdLora.Training;
using SdLora.Web.Jobs;

namespace SdLora.Web;

public sealed record RunSummary(string Name, int Steps, bool HasLora, bool HasState, string? LastJob, string? LastJobState);

public sealed record RunDetail(string Name, JsonElement? Settings, IReadOnlyList<string> Loras, IReadOnlyList<string> Samples, int ClassImages,
    bool HasState, IReadOnlyList<JobRecord> Jobs);

/// <summary>Training runs under <c>DATA/runs</c>: their settings, loss, samples and LoRA files, and the jobs that trained them.</summary>
public sealed class Runs(DataFolders folders, JobStore store)
{
    public string PathOf(string name) => DataFolders.Inside(folders.Runs, name, "run");

    public IReadOnlyList<RunSummary> List()
    {
        var jobs = store.All().Where(j => j.Run is not null).ToList();
        return Directory.EnumerateDirectories(folders.Runs).Select(d =>
        {
            var name = Path.GetFileName(d);
            var last = jobs.FirstOrDefault(j => j.Run == name);
            var loss = Path.Combine(d, "loss.csv");
            int steps = File.Exists(loss) ? LossLog.Read(loss).LastOrDefault()?.Step ?? 0 : 0;
            return new RunSummary(name, steps, Directory.EnumerateFiles(d, "*.safetensors").Any(), Directory.Exists(Path.Combine(d, "state")), last?.Id, last?.State);
        }).OrderByDescending(r => r.LastJob, StringComparer.Ordinal).ToList();
    }

    /// <summary>A run's files and jobs; a run whose first job is still queued has no folder yet and shows empty.</summary>
    public RunDetail Detail(string name)
    {
        var dir = DataFolders.Inside(folders.Runs, name, "run", mustExist: false);
        if (!Directory.Exists(dir) && store.All().All(j => j.Run != name)) throw new ApiException(404, $"run '{name}' not found");
        var runJson = Path.Combine(dir, "run.json");
        JsonElement? settings = File.Exists(runJson) ? JsonDocument.Parse(File.ReadAllText(runJson)).RootElement.Clone() : null;
        var samplesDir = Path.Combine(dir, "samples");
        var samples = Directory.Exists(samplesDir)
            ? Directory.EnumerateFiles(samplesDir, "*.png").Select(f => new FileInfo(f)).OrderBy(f => f.LastWriteTimeUtc).ThenBy(f => f.Name, StringComparer.Ordinal)
                .Select(f => "samples/" + f.Name).ToList()
            : [];
        var loras = !Directory.Exists(dir) ? [] : Directory.EnumerateFiles(dir, "*.safetensors").Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();
        var classDir = Path.Combine(dir, "class_images");
        int classImages = Directory.Exists(classDir) ? ClassImageFolder.CountExisting(classDir) : 0;
        var jobs = store.All().Where(j => j.Run == name).ToList();
        return new RunDetail(name, settings, loras, samples, classImages, Directory.Exists(Path.Combine(dir, "state")), jobs);
    }

    public IReadOnlyList<LossRow> Loss(string name, int after)
    {
        var csv = Path.Combine(DataFolders.Inside(folders.Runs, name, "run", mustExist: false), "loss.csv");
        return File.Exists(csv) ? LossLog.Read(csv).Where(r => r.Step > after).ToList() : [];
    }
}
