using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Text;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Training;

/// <summary>
/// DreamBooth-LoRA training of a frozen model (<c>method lora</c>, kohya's <c>train_network.py</c>): a fresh LoRA on the
/// UNet (and text encoder), one learning rate per part, saved in kohya's format with its <c>ss_*</c> metadata. The
/// phases around it are <see cref="TrainingSession"/>'s.
/// <para>
/// With a <c>token-string</c> the run also trains the vectors of that new word (pivotal tuning, as diffusers' advanced
/// DreamBooth-LoRA script and OneTrainer's additional embeddings do): a rare word such as <c>sks</c> starts out meaning
/// almost nothing to the text encoder, so a LoRA alone has no way to tell "a sks dog" from "a dog" and prior
/// preservation pulls both to the class. The vectors are written beside the LoRA as <c>NAME.embeddings/WORD.safetensors</c>
/// (kohya's embedding file, read by A1111, ComfyUI and sdlora, which uses it whenever the LoRA is in use); the LoRA file
/// itself stays a plain kohya file.
/// </para>
/// </summary>
public sealed class LoraTrainingSession : TrainingSession
{
    private LoraNetwork? _network;
    private bool _trainTextEncoder;
    private NewWordVectors? _words;
    private TextualInversionEmbedding? _sampleWords;

    /// <inheritdoc cref="TrainingSession(TrainingConfig, StableDiffusionModel?, string)"/>
    public LoraTrainingSession(TrainingConfig config, StableDiffusionModel? model = null) : base(config, model, TrainingConfig.MethodLora) { }

    protected override string OutputKind => "LoRA";
    protected override string StateWeightsFile => "lora.safetensors";
    protected override ClipTokenizer Tokenizer => _words?.Tokenizer ?? Model.Tokenizer;

    /// <summary>The state file's name for the new word's vectors (beside the network's <c>lora_*</c> tensors).</summary>
    public const string WordVectorsStateKey = "pivotal." + TextualInversionEmbedding.KohyaTensorName;

    /// <summary>The LoRA network (attached to the model), its optimizer; on resume, the saved weights and optimizer state.</summary>
    protected override void CreateTrainable()
    {
        var c = Settings;
        // kohya's init, drawn from a generator of our own: the run stays reproducible whatever else draws random numbers.
        using var initGenerator = new Generator((ulong)c.Seed, CPU);
        _network = LoraNetwork.Create(Model.UNet, Model.TextEncoder, new LoraNetworkOptions
        {
            Rank = c.NetworkDim, Alpha = c.NetworkAlpha, ConvRank = c.ConvDim, ConvAlpha = c.ConvAlpha,
            TrainUnet = c.NetworkTrainsUnet, TrainTextEncoder = c.NetworkTrainsTextEncoder, Dropout = c.NetworkDropout ?? 0,
            UnetTargets = c.ConvDim is null ? LoraUnetTargets.KohyaDefault : LoraUnetTargets.KohyaDefault | LoraUnetTargets.Convs,
        }, initGenerator);
        _network.DropoutGenerator = DropoutGenerator;
        _network.Attach();

        var groups = new List<ParamGroup>();
        var unetParams = _network.UnetModules.SelectMany(m => m.parameters()).ToList();
        var teParams = _network.TextEncoderModules.SelectMany(m => m.parameters()).ToList();
        if (unetParams.Count > 0) groups.Add(new ParamGroup("unet", unetParams, c.EffectiveUnetLr));
        if (teParams.Count > 0) groups.Add(new ParamGroup("text_encoder", teParams, c.EffectiveTextEncoderLr));
        _trainTextEncoder = teParams.Count > 0;
        if (c.PivotalTuning)
        {
            RequireWordInCaptions("or leave token-string unset to train the LoRA alone");
            _words = NewWordVectors.Attach(Model, c, Info);
            groups.Add(new ParamGroup("embedding", [_words.Rows], c.EffectiveEmbeddingLr));
        }
        CreateOptimizer(groups);
        Info($"LoRA: {_network.UnetModules.Count()} UNet + {_network.TextEncoderModules.Count()} text-encoder modules, " +
             $"{Trainable.Sum(p => p.numel()):N0} trainable parameters, {Optimizer.Describe()}" +
             (_words is { } w ? $"; pivotal tuning: {c.NumVectorsPerToken} vector(s) '{w.SpelledOut}' (token ids {w.IdRange}) from {w.StartedFrom}, lr {c.EffectiveEmbeddingLr:G3}" : ""));
    }

    private LoraNetwork Network => _network ?? throw new InvalidOperationException("the LoRA network is not created yet");

    protected override bool TextNeedsGradient(int step, IReadOnlyList<BatchItem> items) =>
        _trainTextEncoder || (_words is { } w && items.Any(i => w.InCaption(i.Caption)));

    protected override void SetTrainMode()
    {
        base.SetTrainMode();
        if (_trainTextEncoder) Model.TextEncoder.train();
        Network.Train(true);
    }

    protected override void SetEvalMode()
    {
        base.SetEvalMode();
        Network.Train(false);
    }

    protected override string OutputPath(int? epoch) => Folder.LoraPath(Settings.EffectiveOutputName, epoch);

    /// <summary>
    /// The LoRA in kohya format with the run's <c>ss_*</c> metadata, in <c>save-precision</c>; with pivotal tuning the new
    /// word's vectors go to <c>NAME.embeddings/WORD.safetensors</c> first, so a LoRA file never names vectors that are not there.
    /// </summary>
    protected override void WriteOutput(string path, Dictionary<string, string> metadata)
    {
        if (_words is { } w)
        {
            var file = LoraEmbeddings.FileBeside(path, w.Word);
            var folder = Path.GetDirectoryName(file)!;
            Directory.CreateDirectory(folder);
            w.Write(file, metadata, SaveDType);
            metadata = new Dictionary<string, string>(metadata) { ["sdlora_embeddings"] = Path.GetFileName(folder) + "/" + Path.GetFileName(file) };
        }
        Network.Save(path, metadata, SaveDType);
    }

    protected override void DeleteOutput(string outputPath) => LoraEmbeddings.DeleteWithWords(outputPath);

    protected override IEnumerable<KeyValuePair<string, Tensor>> StateWeights() =>
        _words is { } w ? Network.StateDict().Append(new(WordVectorsStateKey, w.Rows)) : Network.StateDict();

    protected override void RestoreWeights(SafetensorsFile f)
    {
        TrainingStateStore.RestoreLora(f, Network);
        if (_words is not { } w) return;
        if (!f.Contains(WordVectorsStateKey))
            throw new SdLoraException($"resume: {f.Path} holds no vectors for '{w.Word}' (the run was started without token-string); resume without it or start over with overwrite") { Setting = "resume" };
        w.Restore(f.Load(WordVectorsStateKey, ScalarType.Float32), f.Path);
    }

    /// <summary>
    /// Sample images name the LoRA as a <c>&lt;lora:NAME:1&gt;</c> tag in their A1111 <c>parameters</c>, with its hash
    /// when <paramref name="outputFile"/> holds these weights.
    /// </summary>
    protected override (Txt2ImgOptions Options, Func<GenerationParameters, GenerationParameters> Describe) SampleSetup(Txt2ImgOptions options, string? outputFile)
    {
        string loraName = Path.GetFileNameWithoutExtension(outputFile ?? OutputPath(null));
        IReadOnlyList<KeyValuePair<string, string>> loraHashes = outputFile is not null && File.Exists(outputFile)
            ? [new(loraName, LoraSet.A1111ShortHash(outputFile))] : [];
        string prompt = options.Prompt;
        if (_words is { } w)
        {
            _sampleWords?.Dispose();
            var saved = outputFile is not null ? LoraEmbeddings.FileBeside(outputFile, w.Word) : null;
            _sampleWords = w.Snapshot(saved is not null && File.Exists(saved) ? saved : null);
            options = options with { Embeddings = [_sampleWords] };
        }
        return (options, p => p with { Prompt = $"{prompt} <lora:{loraName}:1>", LoraHashes = loraHashes });
    }

    /// <summary>Detaches every adapter from the model's layers and takes the new word's rows off the text encoder.</summary>
    protected override void ReleaseTrainable()
    {
        _network?.Dispose();
        _sampleWords?.Dispose();
        _words?.Dispose();
    }
}
