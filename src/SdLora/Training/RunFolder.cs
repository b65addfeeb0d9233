using System.Text.Json;
using System.Text.Json.Serialization;
using SdLora.IO;

namespace SdLora.Training;

/// <summary>
/// The <c>--output</c> folder of a run and the names inside it. <see cref="Prepare"/> refuses a folder that holds
/// another run unless <c>--resume</c> (continue it) or <c>--overwrite</c> (discard its results) is given.
/// </summary>
public sealed class RunFolder
{
    public string Path { get; }
    public bool IsResume { get; }
    public string StateDir => System.IO.Path.Combine(Path, "state");
    public string LossCsv => System.IO.Path.Combine(Path, "loss.csv");
    public string LossPng => System.IO.Path.Combine(Path, "loss.png");
    public string RunJson => System.IO.Path.Combine(Path, "run.json");
    public string SamplesDir => System.IO.Path.Combine(Path, "samples");
    /// <summary>Default home of generated class images (kept by --overwrite: they are slow to make and reusable).</summary>
    public string ClassImagesDir => System.IO.Path.Combine(Path, "class_images");
    public string LatentCacheDir => System.IO.Path.Combine(Path, "latent_cache");

    private RunFolder(string path, bool resume) { Path = path; IsResume = resume; }

    /// <summary>kohya's file names: <c>name-000003.safetensors</c> for epoch saves, <c>name.safetensors</c> for the final one.</summary>
    public string LoraPath(string outputName, int? epoch = null) =>
        System.IO.Path.Combine(Path, epoch is { } e ? $"{outputName}-{e:D6}.safetensors" : $"{outputName}.safetensors");

    /// <summary>True when the folder holds (part of) a run: a state/ folder, run.json, or LoRA files next to a loss.csv.</summary>
    public static bool HoldsRun(string path) =>
        Directory.Exists(System.IO.Path.Combine(path, "state")) || File.Exists(System.IO.Path.Combine(path, "run.json"))
        || (File.Exists(System.IO.Path.Combine(path, "loss.csv")) && Directory.EnumerateFiles(path, "*.safetensors").Any());

    public static RunFolder Prepare(string output, bool resume, bool overwrite)
    {
        if (resume && overwrite) throw new SdLoraException("--resume and --overwrite exclude each other: --resume continues the run in --output, --overwrite discards it");
        var path = System.IO.Path.GetFullPath(output);
        if (File.Exists(path)) throw new SdLoraException($"--output {output} is a file: pass a folder (it is created if missing)");
        bool holds = Directory.Exists(path) && HoldsRun(path);
        if (resume)
        {
            if (!Directory.Exists(System.IO.Path.Combine(path, "state")) || !Directory.EnumerateFileSystemEntries(System.IO.Path.Combine(path, "state")).Any())
                throw new SdLoraException($"--resume: {output} has no saved training state (state/ is missing or empty); run without --resume to start fresh");
            return new RunFolder(path, true);
        }
        if (holds && !overwrite)
            throw new SdLoraException($"--output {output} already holds a training run (state/, run.json or a LoRA with loss.csv): pass --resume to continue it, --overwrite to replace it, or choose another folder");
        Directory.CreateDirectory(path);
        if (holds) Clear(path);
        return new RunFolder(path, false);
    }

    // Removes what a run writes, but keeps class images and latents, which stay valid and are costly to redo.
    private static void Clear(string path)
    {
        foreach (var dir in new[] { "state", "samples" })
        {
            var d = System.IO.Path.Combine(path, dir);
            if (Directory.Exists(d)) Directory.Delete(d, true);
        }
        foreach (var f in new[] { "loss.csv", "loss.png", "run.json" })
            File.Delete(System.IO.Path.Combine(path, f));
        foreach (var f in Directory.EnumerateFiles(path, "*.safetensors")) File.Delete(f);
    }

    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.KebabCaseLower,
        Converters = { new ResolutionJsonConverter() },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>Writes the run's configuration as <c>run.json</c> (keys = flag names), atomically.</summary>
    public void WriteRunJson(TrainingConfig config) => AtomicFile.WriteAllText(RunJson, JsonSerializer.Serialize(config, JsonOptions));

    /// <summary>Reads a <c>run.json</c> back (e.g. to check a resumed run uses the same settings).</summary>
    public static TrainingConfig ReadRunJson(string path)
    {
        try { return JsonSerializer.Deserialize<TrainingConfig>(File.ReadAllText(path), JsonOptions) ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new SdLoraException($"{path}: not a readable run.json ({e.Message}); delete it or pass --overwrite"); }
    }

    private sealed class ResolutionJsonConverter : JsonConverter<Resolution>
    {
        public override Resolution Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => Resolution.Parse(reader.GetString() ?? "");
        public override void Write(Utf8JsonWriter writer, Resolution value, JsonSerializerOptions options) => writer.WriteStringValue(value.ToString());
    }
}
