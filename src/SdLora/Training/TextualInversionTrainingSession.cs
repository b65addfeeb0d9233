using SdLora.IO;
using SdLora.Pipelines;
using SdLora.Text;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Training;

/// <summary>
/// Textual inversion (<c>method textual-inversion</c>; Gal et al. 2022, kohya's <c>train_textual_inversion.py</c>):
/// the model stays frozen and only the embedding of a new word is learned. The word (<c>token-string</c>, with
/// <c>sks1</c>, <c>sks2</c>... for more vectors) is added to the tokenizer; its vectors start as the <c>init-word</c>'s
/// and are the one trained tensor, appended after the text encoder's table (whose own rows are never written, so
/// they stay exactly as loaded). Captions come from the dataset (with the word in them) or from kohya's object/style
/// prompt templates. The result is kohya's file: <c>emb_params [n, dim]</c> in safetensors, which AUTOMATIC1111,
/// ComfyUI and <c>sdlora generate</c> pick up by its file name.
/// <para>
/// Gradient clipping (<c>max-grad-norm</c>) sees only the new rows' gradient; kohya's trainer optimizes the whole
/// table, so its clipping norm also counts the gradients of the other words in the captions, which it then throws away.
/// </para>
/// </summary>
public sealed class TextualInversionTrainingSession : TrainingSession
{
    /// <summary>kohya's (and the textual-inversion paper's) object templates; <c>{}</c> is the new word.</summary>
    public static readonly IReadOnlyList<string> ObjectTemplates =
    [
        "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}", "a photo of a clean {}",
        "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}", "a photo of the cool {}", "a close-up photo of a {}",
        "a bright photo of the {}", "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
        "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
        "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
        "a photo of a cool {}", "a photo of a small {}",
    ];

    /// <summary>kohya's style templates.</summary>
    public static readonly IReadOnlyList<string> StyleTemplates =
    [
        "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
        "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
        "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
        "a close-up painting in the style of {}", "a bright painting in the style of {}", "a cropped painting in the style of {}",
        "a good painting in the style of {}", "a close-up painting in the style of {}", "a rendition in the style of {}",
        "a nice painting in the style of {}", "a small painting in the style of {}", "a weird painting in the style of {}",
        "a large painting in the style of {}",
    ];

    private NewWordVectors? _words;
    private TextualInversionEmbedding? _sampleEmbedding;

    /// <inheritdoc cref="TrainingSession(TrainingConfig, StableDiffusionModel?, string)"/>
    public TextualInversionTrainingSession(TrainingConfig config, StableDiffusionModel? model = null)
        : base(config, model, TrainingConfig.MethodTextualInversion) { }

    protected override string OutputKind => "embedding";
    protected override string StateWeightsFile => "embedding.safetensors";
    protected override string LearningRateHint => $"learning-rate (now {Settings.LearningRate:G3})";
    protected override ClipTokenizer Tokenizer => _words?.Tokenizer ?? Model.Tokenizer;

    /// <summary>The word spelled as all its vector tokens (<c>sks sks1 sks2</c>).</summary>
    private string SpelledOut => string.Join(" ", Settings.TokenStrings);

    protected override CaptionProcessor CaptionRules()
    {
        var c = Settings;
        var rules = base.CaptionRules();
        return c.Template switch
        {
            // The templates spell the word out already.
            "object" => rules with { Templates = ObjectTemplates.Select(t => t.Replace("{}", SpelledOut)).ToList(), WordReplacement = null },
            "style" => rules with { Templates = StyleTemplates.Select(t => t.Replace("{}", SpelledOut)).ToList(), WordReplacement = null },
            _ => rules,
        };
    }

    /// <summary>The new words, their vectors (from the init word, or random) after the text encoder's table, the optimizer.</summary>
    protected override void CreateTrainable()
    {
        var c = Settings;
        if (c.Template == "captions") RequireWordInCaptions("or set template object (or style) to train with kohya's prompt templates");
        _words = NewWordVectors.Attach(Model, c, Info);
        CreateOptimizer([new ParamGroup("embedding", [_words.Rows], c.LearningRate)]);
        Info($"textual inversion: {c.NumVectorsPerToken} vector(s) '{SpelledOut}' (token ids {_words.IdRange}) starting from {_words.StartedFrom}; " +
             $"{(c.Template == "captions" ? "captions as given" : $"kohya's {c.Template} templates")}; {Optimizer.Describe()}");
    }

    private NewWordVectors Words => _words ?? throw new InvalidOperationException("the embedding is not created yet");

    /// <summary>Captions with the new word go through the text encoder with gradients; the others are cached.</summary>
    protected override bool TextNeedsGradient(int step, IReadOnlyList<BatchItem> items) => items.Any(i => Words.InCaption(i.Caption));

    protected override string OutputPath(int? epoch) => Folder.LoraPath(Settings.EffectiveOutputName, epoch);

    protected override Dictionary<string, string> TrainingMetadata(TrainingDataSummary data, DateTimeOffset startedAt) =>
        Settings.ToMethodMetadata(data, startedAt, Optimizer.Describe());

    /// <summary>kohya's embedding file: <c>emb_params [n, dim]</c> in <c>save-precision</c>.</summary>
    protected override void WriteOutput(string path, Dictionary<string, string> metadata) => Words.Write(path, metadata, SaveDType);

    protected override IEnumerable<KeyValuePair<string, Tensor>> StateWeights() => [new(TextualInversionEmbedding.KohyaTensorName, Words.Rows)];

    protected override void RestoreWeights(SafetensorsFile f) => Words.Restore(f.Load(TextualInversionEmbedding.KohyaTensorName, ScalarType.Float32), f.Path);

    /// <summary>Samples use the vectors as trained so far under the token string, as a prompt would call the saved file.</summary>
    protected override (Txt2ImgOptions Options, Func<GenerationParameters, GenerationParameters> Describe) SampleSetup(Txt2ImgOptions options, string? outputFile)
    {
        _sampleEmbedding?.Dispose();
        string? saved = outputFile is not null && File.Exists(outputFile) ? outputFile : null;
        _sampleEmbedding = Words.Snapshot(saved);
        return (options with { Embeddings = [_sampleEmbedding] }, p => p);
    }

    /// <summary>Takes the added rows off the text encoder (its table was never written).</summary>
    protected override void ReleaseTrainable()
    {
        _sampleEmbedding?.Dispose();
        _words?.Dispose();
    }
}
