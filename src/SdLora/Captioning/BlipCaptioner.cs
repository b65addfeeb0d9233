using SdLora.Imaging;
using SdLora.IO;
using SdLora.IO.Pickle;
using SdLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Captioning;

/// <summary>What to generate: the conditional prompt (stripped from the written caption) and the search settings.</summary>
public sealed record BlipCaptionOptions
{
    /// <summary>Hugging Face's and kohya's default conditional prompt. Empty = unconditional captioning.</summary>
    public string Prompt { get; init; } = "a picture of ";
    public BlipGenerationOptions Generation { get; init; } = new() { MaxLength = 75, MinLength = 5 };
    /// <summary>Seed of the sampling draws (used only when sampling).</summary>
    public long Seed { get; init; }
}

/// <summary>
/// A loaded BLIP captioner: model, image processor and tokenizer from a Hugging Face model folder
/// (e.g. a download of <c>Salesforce/blip-image-captioning-large</c>).
/// </summary>
public sealed class BlipCaptioner : IDisposable
{
    public const string ModelEnvironmentVariable = "SDLORA_BLIP_MODEL";
    public static readonly string[] RequiredFiles = ["config.json", "model.safetensors", "vocab.txt"];

    public BlipForConditionalGeneration Model { get; }
    public BlipProcessor Processor { get; }
    public WordPieceTokenizer Tokenizer { get; }
    public ComputeOptions Compute { get; }

    public BlipCaptioner(BlipForConditionalGeneration model, BlipProcessor processor, WordPieceTokenizer tokenizer, ComputeOptions? compute = null)
    {
        Model = model; Processor = processor; Tokenizer = tokenizer; Compute = compute ?? ComputeOptions.CpuFloat32;
    }

    /// <summary><c>$SDLORA_BLIP_MODEL</c> if set, else <c>models/blip</c> under the current directory.</summary>
    public static string DefaultModelFolder() =>
        Environment.GetEnvironmentVariable(ModelEnvironmentVariable) is { Length: > 0 } env ? env : Path.Combine(Environment.CurrentDirectory, "models", "blip");

    /// <summary>Throws the one-line "no model here, this is how to get one" message when <paramref name="folder"/> is not a usable BLIP folder.</summary>
    public static void EnsureModelFolder(string folder)
    {
        var missing = RequiredFiles.Where(f => !File.Exists(Path.Combine(folder, f))).ToList();
        if (missing.Count == 0) return;
        string what = Directory.Exists(folder) ? $"missing {string.Join(", ", missing)}" : "folder not found";
        throw new SdLoraException($"no BLIP model at {folder} ({what}): the folder needs config.json, model.safetensors, preprocessor_config.json, vocab.txt and tokenizer_config.json - download them from Hugging Face (e.g. Salesforce/blip-image-captioning-large) into it, or pass --model DIR or set {ModelEnvironmentVariable}");
    }

    /// <param name="ct">Stops the load between tensors with <see cref="OperationCanceledException"/>.</param>
    public static BlipCaptioner Load(string folder, ComputeOptions? compute = null, CancellationToken ct = default)
    {
        compute ??= ComputeOptions.CpuFloat32;
        ct.ThrowIfCancellationRequested();
        if (OriginalCheckpoint(folder) is { } pth) return LoadOriginal(pth, compute, ct);
        EnsureModelFolder(folder);
        var config = BlipConfig.FromJsonFile(Path.Combine(folder, "config.json"));
        var tokenizer = WordPieceTokenizer.FromFolder(folder);
        var processor = BlipProcessor.FromJsonFile(Path.Combine(folder, "preprocessor_config.json"), config.Vision.ImageSize);
        var model = new BlipForConditionalGeneration(config);
        try
        {
            using var file = SafetensorsFile.Open(Path.Combine(folder, "model.safetensors"));
            LoadWeights(model, file, ct);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        model.to(compute.DType).to(compute.Device);
        return new BlipCaptioner(model, processor, tokenizer, compute);
    }

    /// <summary>An original BLIP checkpoint: a <c>.pth</c> path, or a folder holding one and no <c>model.safetensors</c>.</summary>
    private static string? OriginalCheckpoint(string path)
    {
        if (File.Exists(path)) return Path.GetExtension(path).ToLowerInvariant() is ".pth" or ".pt" or ".ckpt" ? path : null;
        if (!Directory.Exists(path) || File.Exists(Path.Combine(path, "model.safetensors"))) return null;
        return Directory.GetFiles(path, "*.pth").Order(StringComparer.Ordinal).FirstOrDefault();
    }

    /// <summary>
    /// kohya's make_captions.py checkpoint (<c>model_large_caption.pth</c>), read through the restricted unpickler and
    /// renamed to Hugging Face names. The bert-base-uncased <c>vocab.txt</c> must lie beside it; a <c>config.json</c> /
    /// <c>preprocessor_config.json</c> there is used when present, else the shapes give the config (vision LayerNorm eps 1e-6).
    /// </summary>
    private static BlipCaptioner LoadOriginal(string pth, ComputeOptions compute, CancellationToken ct)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(pth))!;
        if (!File.Exists(Path.Combine(dir, "vocab.txt")))
            throw new SdLoraException($"{pth}: an original BLIP checkpoint needs the bert-base-uncased vocab.txt beside it; copy vocab.txt from Salesforce/blip-image-captioning-large (or bert-base-uncased) into {dir}");
        using var source = TorchCheckpoint.Open(pth);
        var view = BlipCheckpointKeys.HuggingFaceView(source);
        var configPath = Path.Combine(dir, "config.json");
        var config = File.Exists(configPath) ? BlipConfig.FromJsonFile(configPath) : BlipCheckpointKeys.ConfigFromShapes(view, 1e-6);
        var processor = BlipProcessor.FromJsonFile(Path.Combine(dir, "preprocessor_config.json"), config.Vision.ImageSize);
        var model = new BlipForConditionalGeneration(config);
        try { LoadWeights(model, view, ct); }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        model.to(compute.DType).to(compute.Device);
        return new BlipCaptioner(model, processor, WordPieceTokenizer.FromFolder(dir), compute);
    }

    /// <summary>
    /// Fills the model from Hugging Face-named tensors. The LM head's <c>decoder.weight</c> falls back to the word
    /// embeddings when absent (the original BLIP code ties them); <c>*.position_ids</c> buffers are ignored.
    /// </summary>
    public static void LoadWeights(BlipForConditionalGeneration model, ITensorSource source, CancellationToken ct = default) =>
        ModuleWeights.Load(model, new TiedHeadSource(source), ct: ct);

    /// <summary><c>[DEC]</c> then the prompt's WordPiece ids (what BLIP builds from <c>[CLS] prompt [SEP]</c>).</summary>
    public long[] PromptIds(string prompt)
    {
        var ids = new List<long> { Model.Config.Text.BosTokenId };
        if (!string.IsNullOrWhiteSpace(prompt))
        {
            var encoded = Tokenizer.Encode(prompt);
            ids.AddRange(encoded[1..^1].Select(i => (long)i));
        }
        return ids.ToArray();
    }

    /// <summary>One caption per image, the prompt stripped.</summary>
    public IReadOnlyList<string> Caption(IReadOnlyList<RgbImage> images, BlipCaptionOptions options, ISamplingNoise? noise = null, CancellationToken cancellationToken = default)
    {
        if (images.Count == 0) return [];
        using var scope = torch.NewDisposeScope();
        var pixels = Processor.Preprocess(images).to(Compute.DType).to(Compute.Device);
        var prompt = PromptIds(options.Prompt);
        if (options.Generation.DoSample) noise ??= new SeededSamplingNoise(options.Seed);
        var result = BlipGenerator.Generate(Model, pixels, prompt, options.Generation, noise, cancellationToken: cancellationToken);
        return result.Sequences.Select(s => CaptionText(s, prompt.Length)).ToList();
    }

    /// <summary>
    /// The decoded caption without the prompt: the full text (what Hugging Face returns) minus the decoded prompt
    /// when it starts with it, else the decoded generated tokens alone.
    /// </summary>
    public string CaptionText(IReadOnlyList<long> sequence, int promptLength)
    {
        var full = Tokenizer.Decode(sequence);
        if (promptLength <= 1) return full;
        var promptText = Tokenizer.Decode(sequence.Take(promptLength));
        if (promptText.Length > 0 && full.StartsWith(promptText, StringComparison.Ordinal)) return full[promptText.Length..].Trim();
        return Tokenizer.Decode(sequence.Skip(promptLength));
    }

    public void Dispose() => Model.Dispose();

    private sealed class TiedHeadSource(ITensorSource inner) : ITensorSource
    {
        private const string Head = "text_decoder.cls.predictions.decoder.weight";
        private const string Words = "text_decoder.bert.embeddings.word_embeddings.weight";

        public string Description => inner.Description;
        public IEnumerable<string> Keys => inner.Keys;
        private string Resolve(string name) => name == Head && !inner.Contains(Head) ? Words : name;
        public bool Contains(string name) => inner.Contains(Resolve(name));
        public long[] ShapeOf(string name) => inner.ShapeOf(Resolve(name));
        public Tensor Load(string name, ScalarType? dtype = null) => inner.Load(Resolve(name), dtype);
    }
}
