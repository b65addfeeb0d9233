using SdLora.Checkpoints;
using SdLora.IO;
using SdLora.Models;
using SdLora.Pipelines;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Training;

/// <summary>
/// Full DreamBooth fine-tuning (<c>method dreambooth</c>; Ruiz et al. 2023, kohya's <c>train_db.py</c>): every weight of
/// the UNet is trained, and the text encoder's too with <c>train-text-encoder</c> (for the first
/// <c>stop-text-encoder-training</c> steps, as kohya). The result is a whole checkpoint: by default in the input's layout
/// with its key names (an LDM single file keeps its keys; a diffusers folder stays a folder), or as chosen with
/// <c>save-model-as</c>; fp16 unless <c>save-precision</c> says otherwise.
/// <para>
/// Memory (SD1.5's UNet has 860M weights: 3.4 GB in fp32, the same again for gradients, twice that for AdamW's two
/// moments): <c>gradient-checkpointing</c> keeps activations small; <c>optimizer Adafactor</c> replaces AdamW's moments
/// by row and column statistics (a few MB); <c>mixed-precision bf16</c> holds the model in bf16 with the optimizer
/// updating fp32 master copies of the trained weights (see <see cref="TrainingOptimizer"/>); the frozen parts are
/// never copied and the saved checkpoint streams them from the input file.
/// </para>
/// A lent model is given back with its original weights (read again from its file, or from a copy taken first when it
/// has none).
/// </summary>
public sealed class DreamBoothTrainingSession : TrainingSession
{
    private List<(string Name, Parameter Parameter)> _unet = [];
    private List<(string Name, Parameter Parameter)> _textEncoder = [];
    private Dictionary<(ModelPart, string), Parameter> _byName = [];
    private int _textEncoderSteps;
    private bool _textEncoderStopped;
    private Dictionary<string, Tensor>? _originalWeights;
    private bool _weightsChanged;

    /// <inheritdoc cref="TrainingSession(TrainingConfig, StableDiffusionModel?, string)"/>
    public DreamBoothTrainingSession(TrainingConfig config, StableDiffusionModel? model = null) : base(config, model, TrainingConfig.MethodDreamBooth) { }

    protected override string OutputKind => "model";
    protected override string StateWeightsFile => "model.safetensors";

    /// <summary>The layout the model is written in: <c>save-model-as</c>, else the input's.</summary>
    private CheckpointLayout OutputLayout => Settings.SaveModelAs switch
    {
        "diffusers" => CheckpointLayout.DiffusersFolder,
        "safetensors" => CheckpointLayout.LdmSingleFile,
        _ => Model.Layout ?? (Directory.Exists(Settings.Model) ? CheckpointLayout.DiffusersFolder : CheckpointLayout.LdmSingleFile),
    };

    protected override void CreateTrainable()
    {
        var c = Settings;
        if (Model.SourcePath is null)
            throw new SdLoraException("dreambooth writes a whole checkpoint from the input model's file, and this model was not loaded from one; load it from a checkpoint") { Setting = "model" };
        _textEncoderSteps = c.TextEncoderTrainingSteps;
        _unet = Model.UNet.named_parameters().Select(p => (p.name, p.parameter)).ToList();
        _textEncoder = _textEncoderSteps > 0 ? Model.TextEncoder.named_parameters().Select(p => (p.name, p.parameter)).ToList() : [];
        if (!OwnsModel && !File.Exists(Model.SourcePath) && !Directory.Exists(Model.SourcePath))
            _originalWeights = Named().ToDictionary(p => p.Key, p => p.Parameter.detach().clone().DetachFromDisposeScope());
        _byName = _unet.Select(p => ((ModelPart.UNet, p.Name), p.Parameter))
            .Concat(_textEncoder.Select(p => ((ModelPart.TextEncoder, p.Name), p.Parameter)))
            .ToDictionary(x => x.Item1, x => x.Parameter);
        foreach (var (_, p) in _unet.Concat(_textEncoder)) p.requires_grad = true;
        _weightsChanged = true;

        var groups = new List<ParamGroup> { new("unet", _unet.Select(p => p.Parameter).ToList(), c.EffectiveUnetLr) };
        if (_textEncoder.Count > 0) groups.Add(new ParamGroup("text_encoder", _textEncoder.Select(p => p.Parameter).ToList(), c.EffectiveTextEncoderLr));
        CreateOptimizer(groups);
        if (Resumed is { } r && r.Step >= _textEncoderSteps) StopTextEncoder();

        long unetCount = _unet.Sum(p => p.Parameter.numel()), teCount = _textEncoder.Sum(p => p.Parameter.numel());
        Info($"dreambooth: UNet {unetCount:N0} weights" + (teCount > 0
                ? $" + text encoder {teCount:N0}" + (_textEncoderSteps < int.MaxValue ? $" (for the first {_textEncoderSteps} steps)" : "")
                : " (text encoder frozen)") +
             $" in {ComputeOptions.DTypeName(Model.Compute.DType)}{(Model.Compute.DType == ScalarType.Float32 ? "" : " with fp32 master copies")}, " +
             $"{Optimizer.Describe()}; saving {(OutputLayout == CheckpointLayout.DiffusersFolder ? "a diffusers folder" : "a single safetensors file")} in {ComputeOptions.DTypeName(SaveDType)}");
    }

    /// <summary>kohya's <c>stop_text_encoder_training</c>: from here on the text encoder is frozen (and its conditioning cached).</summary>
    private void StopTextEncoder()
    {
        if (_textEncoderStopped || _textEncoder.Count == 0) return;
        _textEncoderStopped = true;
        Optimizer.Freeze("text_encoder");
        foreach (var (_, p) in _textEncoder) p.requires_grad = false;
        Model.TextEncoder.eval();
        ClearTextCache();
    }

    protected override bool TextNeedsGradient(int step, IReadOnlyList<BatchItem> items) => _textEncoder.Count > 0 && step < _textEncoderSteps;

    protected override void AfterOptimizerStep(int step)
    {
        if (step + 1 >= _textEncoderSteps) StopTextEncoder();
    }

    protected override void SetTrainMode()
    {
        base.SetTrainMode();
        if (_textEncoder.Count > 0 && !_textEncoderStopped) Model.TextEncoder.train();
    }

    protected override string OutputPath(int? epoch) => OutputLayout == CheckpointLayout.DiffusersFolder
        ? Folder.ModelFolderPath(Settings.EffectiveOutputName, epoch)
        : Folder.LoraPath(Settings.EffectiveOutputName, epoch);

    protected override Dictionary<string, string> TrainingMetadata(TrainingDataSummary data, DateTimeOffset startedAt) =>
        Settings.ToMethodMetadata(data, startedAt, Optimizer.Describe());

    /// <summary>The whole model: trained weights from memory, everything else streamed from the input checkpoint.</summary>
    protected override void WriteOutput(string path, Dictionary<string, string> metadata) =>
        CheckpointWriter.Write(Model.SourcePath!, (part, name) => _byName.GetValueOrDefault((part, name)), path, OutputLayout, SaveDType, metadata);

    private static string StateName(ModelPart part, string name) => (part == ModelPart.UNet ? "unet." : "text_encoder.") + name;

    private IEnumerable<(string Key, Parameter Parameter)> Named() =>
        _unet.Select(p => (StateName(ModelPart.UNet, p.Name), p.Parameter)).Concat(_textEncoder.Select(p => (StateName(ModelPart.TextEncoder, p.Name), p.Parameter)));

    protected override IEnumerable<KeyValuePair<string, Tensor>> StateWeights() =>
        _byName.Select(kv => new KeyValuePair<string, Tensor>(StateName(kv.Key.Item1, kv.Key.Item2), kv.Value));

    protected override void RestoreWeights(SafetensorsFile f)
    {
        using var noGrad = torch.no_grad();
        foreach (var ((part, name), p) in _byName)
        {
            var key = StateName(part, name);
            if (!f.Contains(key) || !f.ShapeOf(key).SequenceEqual(p.shape))
                throw new SdLoraException($"resume: {f.Path} has no weight {key} of shape [{string.Join(",", p.shape)}]: the saved run trained something else; resume with the same settings or start over with overwrite") { Setting = "resume" };
            using var t = f.Load(key, p.dtype);
            p.copy_(t);
        }
    }

    /// <summary>Sample images name the fine-tuned model (its file and hash once saved) in their parameters.</summary>
    protected override (Txt2ImgOptions Options, Func<GenerationParameters, GenerationParameters> Describe) SampleSetup(Txt2ImgOptions options, string? outputFile)
    {
        string name = Path.GetFileNameWithoutExtension(outputFile ?? OutputPath(null));
        string? hash = outputFile is not null && File.Exists(outputFile) ? ModelHashes.A1111ShortHash(outputFile) : null;
        return (options, p => p with { Model = name, ModelHash = hash });
    }

    /// <summary>Freezes the model again and frees the gradients; a lent model gets its original weights back.</summary>
    protected override void ReleaseTrainable()
    {
        using (torch.no_grad())
            foreach (var (_, p) in _unet.Concat(_textEncoder))
            {
                p.requires_grad = false;
                p.grad = null;
            }
        if (OwnsModel || !_weightsChanged) return;
        if (_originalWeights is not null)
        {
            using (torch.no_grad())
                foreach (var (key, p) in Named()) p.copy_(_originalWeights[key]);
            foreach (var t in _originalWeights.Values) t.Dispose();
            _originalWeights = null;
        }
        else
        {
            using var checkpoint = StableDiffusionCheckpoint.Open(Model.SourcePath!);
            ModuleWeights.Load(Model.UNet, checkpoint.UNetWeights);
            if (_textEncoder.Count > 0) ModuleWeights.Load(Model.TextEncoder, checkpoint.TextEncoderWeights);
        }
        _weightsChanged = false;
    }
}
