using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Training;

/// <summary>
/// DreamBooth-LoRA training of a frozen model (<c>method lora</c>, kohya's <c>train_network.py</c>): a fresh LoRA on the
/// UNet (and text encoder), one learning rate per part, saved in kohya's format with its <c>ss_*</c> metadata. The
/// phases around it are <see cref="TrainingSession"/>'s.
/// </summary>
public sealed class LoraTrainingSession : TrainingSession
{
    private LoraNetwork? _network;
    private bool _trainTextEncoder;

    /// <inheritdoc cref="TrainingSession(TrainingConfig, StableDiffusionModel?, string)"/>
    public LoraTrainingSession(TrainingConfig config, StableDiffusionModel? model = null) : base(config, model, TrainingConfig.MethodLora) { }

    protected override string OutputKind => "LoRA";
    protected override string StateWeightsFile => "lora.safetensors";

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
        CreateOptimizer(groups);
        Info($"LoRA: {_network.UnetModules.Count()} UNet + {_network.TextEncoderModules.Count()} text-encoder modules, " +
             $"{Trainable.Sum(p => p.numel()):N0} trainable parameters, {Optimizer.Describe()}");
    }

    private LoraNetwork Network => _network ?? throw new InvalidOperationException("the LoRA network is not created yet");

    protected override bool TextNeedsGradient(int step, IReadOnlyList<BatchItem> items) => _trainTextEncoder;

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

    /// <summary>The LoRA in kohya format with the run's <c>ss_*</c> metadata, in <c>save-precision</c>.</summary>
    protected override void WriteOutput(string path, Dictionary<string, string> metadata) => Network.Save(path, metadata, SaveDType);

    protected override IEnumerable<KeyValuePair<string, Tensor>> StateWeights() => Network.StateDict();

    protected override void RestoreWeights(SafetensorsFile f) => TrainingStateStore.RestoreLora(f, Network);

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
        return (options, p => p with { Prompt = $"{prompt} <lora:{loraName}:1>", LoraHashes = loraHashes });
    }

    /// <summary>Detaches every adapter from the model's layers.</summary>
    protected override void ReleaseTrainable() => _network?.Dispose();
}
