using System.Text.Json;
using System.Text.Json.Serialization;
using SdLora.IO;

namespace SdLora.Training;

/// <summary>
/// The output folder of a run and the names inside it. <see cref="Prepare"/> refuses a folder that holds another
/// run (saved state, or a LoRA with its loss.csv) unless <c>resume</c> (continue it) or <c>overwrite</c> (discard its
/// results) is set; a folder whose run never saved anything (it failed or was stopped early) is simply reused.
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
    /// <summary>TensorBoard event files.</summary>
    public string LogsDir => System.IO.Path.Combine(Path, "logs");
    /// <summary>Default home of generated class images (kept by overwrite: they are slow to make and reusable).</summary>
    public string ClassImagesDir => System.IO.Path.Combine(Path, "class_images");
    public string LatentCacheDir => System.IO.Path.Combine(Path, "latent_cache");

    private RunFolder(string path, bool resume) { Path = path; IsResume = resume; }

    /// <summary>kohya's file names: <c>name-000003.safetensors</c> for epoch saves, <c>name.safetensors</c> for the final one.</summary>
    public string LoraPath(string outputName, int? epoch = null) =>
        System.IO.Path.Combine(Path, epoch is { } e ? $"{outputName}-{e:D6}.safetensors" : $"{outputName}.safetensors");

    /// <summary>The same names for a result that is a folder (a diffusers model): <c>name-000003/</c>, <c>name/</c>.</summary>
    public string ModelFolderPath(string outputName, int? epoch = null) =>
        System.IO.Path.Combine(Path, epoch is { } e ? $"{outputName}-{e:D6}" : outputName);

    /// <summary>The epoch LoRA files of <paramref name="outputName"/> in this folder (<c>name-000003.safetensors</c>), by epoch.</summary>
    public SortedDictionary<int, string> EpochLoras(string outputName)
    {
        var result = new SortedDictionary<int, string>();
        foreach (var f in Directory.EnumerateFiles(Path, outputName + "-*.safetensors"))
            if (EpochOf(System.IO.Path.GetFileNameWithoutExtension(f), outputName) is { } epoch) result[epoch] = f;
        return result;
    }

    /// <summary>The epoch results of <paramref name="outputName"/>: files <c>name-000003.safetensors</c> and diffusers folders <c>name-000003/</c>, by epoch.</summary>
    public SortedDictionary<int, string> EpochOutputs(string outputName)
    {
        var result = EpochLoras(outputName);
        foreach (var d in Directory.EnumerateDirectories(Path, outputName + "-*"))
            if (EpochOf(System.IO.Path.GetFileName(d), outputName) is { } epoch) result[epoch] = d;
        return result;
    }

    private static int? EpochOf(string stem, string outputName)
    {
        var digits = stem[(outputName.Length + 1)..];
        return digits.Length == 6 && digits.All(char.IsAsciiDigit) ? int.Parse(digits, System.Globalization.CultureInfo.InvariantCulture) : null;
    }

    /// <summary>True when the folder holds resumable state (<c>state/state.json</c>, or <c>state.old/</c> after a save cut off mid-swap).</summary>
    public static bool HasSavedState(string path) =>
        File.Exists(System.IO.Path.Combine(path, "state", "state.json")) || File.Exists(System.IO.Path.Combine(path, "state.old", "state.json"));

    /// <summary>
    /// True when the folder holds the results of a run: saved state, or LoRA files next to a loss.csv. A run that
    /// stopped before its first save leaves only run.json (and perhaps loss.csv or class images): that is not a run.
    /// </summary>
    public static bool HoldsRun(string path) =>
        Directory.Exists(path) && (HasSavedState(path)
        || File.Exists(System.IO.Path.Combine(path, "loss.csv")) && (Directory.EnumerateFiles(path, "*.safetensors").Any()
            || Directory.EnumerateDirectories(path).Any(d => File.Exists(System.IO.Path.Combine(d, "model_index.json")))));

    /// <summary>
    /// Makes <paramref name="output"/> ready for a run, before any expensive work: refuses a file, one of the run's
    /// <paramref name="inputs"/>, or a folder holding another run (unless <paramref name="resume"/> or
    /// <paramref name="overwrite"/>); creates the folder and proves it writable (<see cref="OutputPath.CheckFolder"/>);
    /// clears what a replaced or never-saved run left (class images and the latent cache are kept).
    /// </summary>
    /// <param name="inputs">Files and folders the run reads (data, model): the output may not be one of them.</param>
    public static RunFolder Prepare(string output, bool resume, bool overwrite, IEnumerable<string?>? inputs = null)
    {
        if (resume && overwrite) throw Error("overwrite", "resume and overwrite exclude each other: resume continues the run in the output folder, overwrite discards it");
        var path = System.IO.Path.GetFullPath(output);
        if (File.Exists(path)) throw Error("output", $"output {output} is a file: give a folder (it is created if missing)");
        if (resume)
        {
            if (!HasSavedState(path))
                throw Error("resume", $"resume: {output} has no saved training state (state/ is missing or empty" +
                    (File.Exists(System.IO.Path.Combine(path, "run.json")) ? "; the last run there stopped before its first save" : "") +
                    "): start without resume to train from the beginning");
            CheckWritable(output, inputs);
            return new RunFolder(path, true);
        }
        bool holds = HoldsRun(path);
        if (holds && !overwrite)
            throw Error("output", HasSavedState(path)
                ? $"output {output} already holds a training run with saved state: set resume to continue it or overwrite to replace it, or choose another output folder"
                : $"output {output} already holds a trained LoRA with its loss.csv: set overwrite to replace it, or choose another output folder");
        CheckWritable(output, inputs);
        if (holds) Clear(path);
        else if (File.Exists(System.IO.Path.Combine(path, "run.json"))) ClearUnsavedRun(path);
        return new RunFolder(path, false);
    }

    // The rule every writer follows (never an input; created and probed now, so an impossible location fails in a second).
    private static void CheckWritable(string output, IEnumerable<string?>? inputs)
    {
        try { OutputPath.CheckFolder(output, inputs, "output folder"); }
        catch (SdLoraException e) { throw new SdLoraException(e.Message, e) { Setting = "output" }; }
    }

    // Removes what a run writes, but keeps class images and latents, which stay valid and are costly to redo.
    private static void Clear(string path)
    {
        foreach (var dir in new[] { "state", "state.old", "state.new", "samples", "logs" })
        {
            var d = System.IO.Path.Combine(path, dir);
            if (Directory.Exists(d)) Directory.Delete(d, true);
        }
        foreach (var f in new[] { "loss.csv", "loss.png", "run.json" })
            File.Delete(System.IO.Path.Combine(path, f));
        foreach (var f in Directory.EnumerateFiles(path, "*.safetensors").ToList())
            Lora.LoraEmbeddings.DeleteWithWords(f);
        // Fine-tuned models saved as diffusers folders.
        foreach (var d in Directory.EnumerateDirectories(path).Where(d => File.Exists(System.IO.Path.Combine(d, "model_index.json"))))
            Directory.Delete(d, true);
    }

    // A run that never saved: its run.json, loss log and TensorBoard events describe nothing that exists any more.
    private static void ClearUnsavedRun(string path)
    {
        foreach (var f in new[] { "loss.csv", "loss.png", "run.json" })
            File.Delete(System.IO.Path.Combine(path, f));
        foreach (var dir in new[] { "logs", "state.new" })
        {
            var d = System.IO.Path.Combine(path, dir);
            if (Directory.Exists(d)) Directory.Delete(d, true);
        }
    }

    private static SdLoraException Error(string setting, string message) => new(message) { Setting = setting };

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
        catch (JsonException e) { throw new SdLoraException($"{path}: not a readable run.json ({e.Message}); delete it, or set overwrite"); }
    }

    private sealed class ResolutionJsonConverter : JsonConverter<Resolution>
    {
        public override Resolution Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => Resolution.Parse(reader.GetString() ?? "");
        public override void Write(Utf8JsonWriter writer, Resolution value, JsonSerializerOptions options) => writer.WriteStringValue(value.ToString());
    }
}
