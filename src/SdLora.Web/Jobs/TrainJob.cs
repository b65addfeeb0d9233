using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Training;

namespace SdLora.Web.Jobs;

/// <summary>
/// A training request: the run's name, the dataset and checkpoint by name, and the settings by their flag names
/// (<c>network-dim</c>, <c>learning-rate</c>, ...: the same names and checks as <c>sdlora train</c>).
/// <see cref="Resume"/> continues the run's saved state with the settings in its <c>run.json</c>.
/// </summary>
public sealed record TrainArgs
{
    public string Run { get; init; } = "";
    public string? Dataset { get; init; }
    public string? Model { get; init; }
    public Dictionary<string, string?> Settings { get; init; } = [];
    /// <summary>kohya-style sample prompt lines (<c>prompt --n negative --d seed --s steps</c>), written to the run folder.</summary>
    public string? SamplePrompts { get; init; }
    public bool Resume { get; init; }
}

public sealed record TrainResult(string Run, string? Lora, string? LibraryLora, int Steps, int TotalSteps, bool Cancelled, double? SmoothedLoss,
    IReadOnlyList<string> Samples, int ClassImagesGenerated);

/// <summary>
/// DreamBooth-LoRA training into <c>DATA/runs/RUN</c>. Cancel saves the LoRA and <c>state/</c>; a later job (Resume, or
/// the same job after a server restart) continues from there. The finished LoRA is copied into the LoRA folder as
/// <c>RUN.safetensors</c>, ready for <c>&lt;lora:RUN:0.8&gt;</c>.
/// </summary>
public sealed class TrainJob(DataFolders folders, Datasets datasets, ModelCatalog catalog, ModelHost host, ServeOptions options) : IJobHandler
{
    public const string TypeName = "train";
    public const string JobMarker = "sdlora-job.txt";
    public string Type => TypeName;

    // Set by the server from names; a request may not point them anywhere.
    private static readonly HashSet<string> ServerSet = ["model", "data", "output", "reg-data", "class-data", "sample-prompts", "resume", "overwrite", "threads", "device"];

    public string RunDir(string run) => Path.Combine(folders.Runs, DataFolders.CheckNewName(run, "run"));

    /// <summary>Checks the request as <c>sdlora train</c> would (bad settings get a 400 naming the flag) before it is queued.</summary>
    public TrainArgs Check(TrainArgs a)
    {
        var dir = RunDir(a.Run);
        if (a.Resume)
        {
            if (!Directory.Exists(Path.Combine(dir, "state"))) throw new ApiException(409, $"run '{a.Run}' has no saved state to resume");
            return a;
        }
        if (Directory.Exists(dir) && RunFolder.HoldsRun(dir)) throw new ApiException(409, $"run '{a.Run}' already exists: choose another name, or resume it from its page");
        var config = Config(a, Path.Combine(dir, "sample_prompts.txt"));
        if (a.SamplePrompts is { } text)
        {
            int i = 0;
            foreach (var line in Lines(text))
                try { SamplePrompts.Parse(line, config.Resolution.Width, config.Resolution.Height, config.Seed + i++); }
                catch (SdLoraException e) { throw new ApiException(400, "--sample-prompts: " + e.Message); }
        }
        return a with { Model = catalog.Checkpoint(a.Model).Name };
    }

    private static IEnumerable<string> Lines(string text) =>
        text.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#'));

    /// <summary>The run's <see cref="TrainingConfig"/>: settings by flag name, then the server's paths.</summary>
    public TrainingConfig Config(TrainArgs a, string samplePromptsFile)
    {
        var values = a.Settings.Where(kv => !string.IsNullOrWhiteSpace(kv.Value)).ToDictionary(kv => kv.Key.Trim(), kv => (object?)kv.Value!.Trim());
        foreach (var key in values.Keys)
            if (ServerSet.Contains(key.Replace('_', '-').ToLowerInvariant()))
                throw new ApiException(400, $"--{key} is set by the server (from the run, dataset and model names); leave it out");
        var dataset = datasets.PathOf(a.Dataset ?? throw new ApiException(400, "dataset is required: create one on the Datasets page"));
        var ds = datasets.Settings(a.Dataset);
        var baseConfig = new TrainingConfig { InstancePrompt = ds.InstancePrompt, ClassPrompt = string.IsNullOrWhiteSpace(ds.ClassPrompt) ? null : ds.ClassPrompt, NumRepeats = ds.Repeats };
        try
        {
            var config = TrainingConfigLoader.Apply(baseConfig, values, "train settings") with
            {
                Model = catalog.Checkpoint(a.Model).Path, Data = dataset, Output = RunDir(a.Run), OutputName = DataFolders.CheckNewName(a.Run, "run"),
                SamplePrompts = string.IsNullOrWhiteSpace(a.SamplePrompts) ? null : samplePromptsFile, Device = options.Device,
            };
            if (string.IsNullOrWhiteSpace(config.InstancePrompt) && !Directory.EnumerateFiles(dataset, "*.txt", SearchOption.AllDirectories).Any()
                && !Directory.EnumerateDirectories(dataset).Any(d => DreamBoothDataset.TryParseKohyaFolder(Path.GetFileName(d), out _, out _)))
                throw new SdLoraException("--instance-prompt is required when the images have no captions (e.g. \"a photo of sks dog\")");
            return config.Validate();
        }
        catch (SdLoraException e) { throw new ApiException(400, e.Message); }
    }

    public object? Run(JobContext context)
    {
        var a = context.Args<TrainArgs>();
        var dir = RunDir(a.Run);
        Directory.CreateDirectory(dir);
        var marker = Path.Combine(dir, JobMarker);
        bool ours = File.Exists(marker) && File.ReadAllText(marker).Trim() == context.Record.Id;
        bool hasState = Directory.Exists(Path.Combine(dir, "state")) && Directory.EnumerateFileSystemEntries(Path.Combine(dir, "state")).Any();
        TrainingConfig config;
        if (a.Resume || ours && hasState)
        {
            config = RunFolder.ReadRunJson(Path.Combine(dir, "run.json")) with { Resume = true, Overwrite = false, Device = options.Device };
            context.Log(a.Resume ? "resuming the run from its saved state" : "continuing from the last saved state: the previous attempt was cut off (server restart or lost worker)");
        }
        else
        {
            var prompts = Path.Combine(dir, "sample_prompts.txt");
            config = Config(a, prompts) with { Overwrite = ours && RunFolder.HoldsRun(dir) };
            if (a.SamplePrompts is { } text) AtomicFile.WriteAllText(prompts, string.Join("\n", Lines(text)) + "\n");
        }
        AtomicFile.WriteAllText(marker, context.Record.Id);

        // The session trains on the hosted model (loaded once, shared with generation) and hands it back clean.
        // dtype auto (the form's default) resolves as the server's own precision does, from the same CPU probe.
        var compute = options.Compute(config.MixedPrecision is "bf16" or "fp16" ? config.MixedPrecision : config.Dtype, config.Device);
        context.Progress(new JobProgress("loading model", 0, 1, Path.GetFileName(config.Model)));
        using var lease = host.Borrow(config.Model!, compute, context.Token);
        var session = new LoraTrainingSession(config, lease.Model);
        var result = session.Run(new SyncProgress<TrainingProgress>(p => Report(context, p)), context.Token);

        string? library = null;
        if (!result.Cancelled && result.LoraPath is { } lora)
        {
            library = CopyToLibrary(lora, config.EffectiveOutputName);
            context.Log($"LoRA ready: {Path.GetFileName(lora)}; use it as <lora:{config.EffectiveOutputName}:0.8>");
        }
        else if (result.Cancelled) context.Log($"stopped at step {result.Steps}: state saved, Resume continues from here");
        var made = new List<string> { Path.Combine(dir, "run.json"), Path.Combine(dir, "loss.csv"), Path.Combine(dir, "state") };
        if (result.LoraPath is { } trained) made.Add(trained);
        if (library is not null) made.Add(Path.Combine(folders.Loras, library + ".safetensors"));
        made.AddRange(result.Samples);
        context.Owns(made.Where(p => File.Exists(p) || Directory.Exists(p)));
        return new TrainResult(a.Run, result.LoraPath is null ? null : Path.GetRelativePath(dir, result.LoraPath), library, result.Steps, result.TotalSteps,
            result.Cancelled, result.SmoothedLoss, result.Samples.Select(s => Path.GetRelativePath(dir, s)).ToList(), result.ClassImagesGenerated);
    }

    /// <summary>
    /// Copies the LoRA into the LoRA library under the run's name, with the words trained beside it (pivotal tuning,
    /// <c>NAME.embeddings/</c>), which generation uses whenever the LoRA is in use; a library copy of an earlier run
    /// loses its old words.
    /// </summary>
    private string CopyToLibrary(string lora, string name)
    {
        var target = Path.Combine(folders.Loras, name + ".safetensors");
        var words = LoraEmbeddings.FolderBeside(lora);
        var targetWords = LoraEmbeddings.FolderBeside(target);
        if (Directory.Exists(words))
        {
            var fresh = Path.Combine(folders.Loras, $".{name}.embeddings.{Guid.NewGuid():N}.tmp");
            Directory.CreateDirectory(fresh);
            foreach (var f in Directory.EnumerateFiles(words)) File.Copy(f, Path.Combine(fresh, Path.GetFileName(f)));
            AtomicFile.ReplaceFolder(fresh, targetWords);
        }
        else if (Directory.Exists(targetWords)) Directory.Delete(targetWords, recursive: true);
        AtomicFile.Write(target, s => { using var src = File.OpenRead(lora); src.CopyTo(s); });
        return name;
    }

    private static void Report(JobContext context, TrainingProgress p)
    {
        switch (p.Phase)
        {
            case TrainingPhase.Info: context.Log(p.Message); break;
            case TrainingPhase.ClassImages: context.Progress(new JobProgress("class images", p.Done, p.Total)); break;
            case TrainingPhase.CachingLatents: context.Progress(new JobProgress("caching latents", p.Done, p.Total)); break;
            case TrainingPhase.Training:
                context.Progress(new JobProgress("training", p.Done, p.Total, null, p.Epoch, p.TotalEpochs, p.StepsPerSecond, p.Eta.TotalSeconds,
                    Finite(p.Loss), Finite(p.SmoothedLoss), p.LearningRate));
                break;
            case TrainingPhase.Sampling: context.Progress(new JobProgress("sampling", p.Done, p.Total, p.Message)); break;
            case TrainingPhase.Saving:
                context.Log("saving: " + p.Message);
                context.Progress(new JobProgress("saving", p.Done, p.Total, p.Message, p.Epoch, p.TotalEpochs));
                break;
        }
    }

    private static double? Finite(double v) => double.IsFinite(v) ? v : null;
}
