using System.Diagnostics;
using System.Globalization;
using SdLora.Imaging;
using SdLora.IO;
using SdLora.Pipelines;
using SdLora.Text;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Training;

public enum TrainingPhase { Info, ClassImages, CachingLatents, Training, Sampling, Saving }

/// <summary>
/// A progress report. <see cref="TrainingPhase.Info"/> carries a <see cref="Message"/> to show (dataset and bucket summaries);
/// the other phases count <see cref="Done"/> of <see cref="Total"/> (images or optimizer steps), with a rate
/// (<see cref="StepsPerSecond"/>: images per second while generating class images) and an <see cref="Eta"/> once known.
/// </summary>
public sealed record TrainingProgress(TrainingPhase Phase, int Done, int Total, int Epoch = 0, int TotalEpochs = 0,
    double StepsPerSecond = 0, TimeSpan Eta = default, double Loss = double.NaN, double SmoothedLoss = double.NaN,
    double LearningRate = 0, string Message = "");

/// <summary>
/// What a run produced. <see cref="OutputFile"/> is the final result (a LoRA file, a checkpoint file or diffusers folder,
/// an embedding file); <see cref="SavedOutputs"/> lists the results of this run that still exist (epoch saves too).
/// </summary>
public sealed record TrainingResult(string OutputDir, string? OutputFile, IReadOnlyList<string> SavedOutputs, string LossCsv, string? LossPng,
    IReadOnlyList<string> Samples, int Steps, int TotalSteps, int Epochs, bool Cancelled, double? SmoothedLoss, TimeSpan Elapsed,
    string BucketSummary, int ClassImagesGenerated, string Method = TrainingConfig.MethodLora, IReadOnlyList<PhaseTime>? Phases = null)
{
    /// <summary>The final result under its LoRA-era name (see <see cref="OutputFile"/>).</summary>
    public string? LoraPath => OutputFile;
    /// <summary>See <see cref="SavedOutputs"/>.</summary>
    public IReadOnlyList<string> SavedLoras => SavedOutputs;
}

/// <summary>
/// One training run of a Stable Diffusion 1.x model, kohya-style, phase by phase; what is trained (a LoRA, the whole
/// model, new token embeddings) is the subclass's part, everything around it is shared:
/// <list type="number">
/// <item><see cref="Prepare"/>: the output folder (refusing to clobber another run; resume position), the dataset, the model;</item>
/// <item><see cref="GenerateClassImages"/>: with a class prompt, the missing prior-preservation images, made by the base model;</item>
/// <item><see cref="PlanAndCache"/>: buckets and batches (a pure function of seed and epoch), latents encoded once by the VAE;</item>
/// <item><see cref="CreateTrainable"/> (subclass): what is trained, its optimizer; on resume, the saved weights and optimizer state;</item>
/// <item><see cref="Step"/>: one optimizer step of <c>gradient-accumulation-steps</c> micro-batches through <see cref="DiffusionLoss"/>;</item>
/// <item><see cref="SaveOutput"/>/<see cref="SaveState"/>: the result (with metadata), loss.csv/png and <c>state/</c>, every
///   <c>save-every-n-epochs</c>, at the end and on cancellation; <see cref="Sample"/>: sample images.</item>
/// </list>
/// Every random draw comes from generators of the run's own (initial weights from the seed; noise, timesteps and
/// dropout masks from (seed, epoch, micro-batch)), so a resumed run equals an uninterrupted one and nothing
/// process-wide is touched: torch's thread count and global generator belong to the host.
/// <para>
/// The model is either loaded from <see cref="TrainingConfig.Model"/> (and disposed at the end) or lent by the caller:
/// a lent model is not disposed, and everything the session changed on it (adapters, modes, trained weights, added
/// token rows) is undone when <see cref="Run"/> returns or throws, so the model computes exactly what it did before.
/// </para>
/// </summary>
public abstract class TrainingSession
{
    private readonly StableDiffusionModel? _lentModel;
    private readonly (bool UNetTraining, bool TextEncoderTraining, bool VaeTraining, bool Checkpointing) _lentModes;
    private bool _started;

    // ---- set by Prepare ----
    private TrainingConfig _c;
    private IProgress<TrainingProgress>? _progress;
    private CancellationToken _ct;
    private readonly Stopwatch _clock = new();
    private readonly PhaseTimer _timer = new();
    private TrainingState? _resumed;
    private DreamBoothDataset _dataset = null!;
    private StableDiffusionModel _model = null!;
    private Txt2ImgPipeline _pipeline = null!;
    private List<SamplePrompt>? _samplePrompts;
    private int _classImagesGenerated;

    // ---- set by PlanAndCache ----
    private BatchPlanner _planner = null!;
    private int _totalSteps, _totalEpochs;
    private string _bucketSummary = "";
    private LatentCache? _latentCache;
    private readonly Dictionary<string, Tensor> _embeddingCache = [];
    private LrSchedule _schedule = null!;
    private Generator? _dropoutGenerator;

    // ---- outputs ----
    private LossLog _lossLog = null!;
    private TensorBoardLog? _tensorBoard;
    private Dictionary<string, string> _metadataBase = [];
    private DateTimeOffset _startedAt;
    private readonly List<string> _saved = [];
    private readonly List<string> _samples = [];
    private string? _lastOutput;

    /// <param name="config">The run's settings; checked at once (<see cref="TrainingConfig.Validate"/>).</param>
    /// <param name="model">
    /// A model already loaded by the caller (e.g. a server's model host), used instead of loading
    /// <see cref="TrainingConfig.Model"/>, which may then be left empty. Its device and dtype are used as they are; the
    /// session never disposes it and leaves it as it found it.
    /// </param>
    protected TrainingSession(TrainingConfig config, StableDiffusionModel? model, string method)
    {
        if (model is not null && string.IsNullOrWhiteSpace(config.Model)) config = config with { Model = model.SourcePath ?? model.Name };
        Config = config.Validate();
        if (Config.Method != method)
            throw new ArgumentException($"this session trains method {method}; the config asks for {Config.Method} (use TrainingSession.Create)", nameof(config));
        _c = Config;
        _lentModel = model;
        if (model is not null) _lentModes = (model.UNet.training, model.TextEncoder.training, model.Vae.training, model.UNet.GradientCheckpointing);
    }

    /// <summary>The session for the config's <see cref="TrainingConfig.Method"/>: LoRA, DreamBooth fine-tuning or textual inversion.</summary>
    /// <param name="cpuProbe">See <see cref="CpuProbe"/>.</param>
    public static TrainingSession Create(TrainingConfig config, StableDiffusionModel? model = null, Func<CpuKernelProbeResult>? cpuProbe = null)
    {
        TrainingSession session = config.Method switch
        {
            TrainingConfig.MethodTextualInversion => new TextualInversionTrainingSession(config, model),
            TrainingConfig.MethodDreamBooth => new DreamBoothTrainingSession(config, model),
            _ => new LoraTrainingSession(config, model),
        };
        session.CpuProbe = cpuProbe;
        return session;
    }

    /// <summary>
    /// How <c>dtype auto</c> (and CPU bf16) learn this CPU's bf16 speed when the session loads the model, e.g. a cached
    /// probe (<see cref="CpuKernelProbeCache"/>); null measures afresh with <see cref="CpuKernelProbe.Measure"/> when needed.
    /// </summary>
    public Func<CpuKernelProbeResult>? CpuProbe { get; set; }

    /// <summary>The settings as given (the session's working copy also records where class images went).</summary>
    public TrainingConfig Config { get; }

    /// <summary>
    /// Runs the whole training. Cancelling <paramref name="ct"/> during training saves the result and state after the
    /// current step and returns a result with <see cref="TrainingResult.Cancelled"/>; cancelling before training began
    /// (class images, latent caching) throws <see cref="OperationCanceledException"/> with nothing to save.
    /// A session runs once.
    /// </summary>
    public TrainingResult Run(IProgress<TrainingProgress>? progress = null, CancellationToken ct = default)
    {
        if (_started) throw new InvalidOperationException("a training session runs once; create a new one for another run");
        _started = true;
        _progress = progress;
        _ct = ct;
        _clock.Start();
        try
        {
            Prepare();
            GenerateClassImages();
            PlanAndCache();
            CreateTrainable();
            if (Optimizer is null) throw new InvalidOperationException($"{GetType().Name}.CreateTrainable did not create the optimizer");
            _schedule = LrSchedule.FromConfig(_c, _totalSteps);
            OpenOutputs();
            return Train();
        }
        finally { Release(); }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // What subclasses see and provide.
    // ---------------------------------------------------------------------------------------------------------------

    /// <summary>The working settings (with <c>class-data</c> filled in once class images were generated).</summary>
    protected TrainingConfig Settings => _c;
    protected StableDiffusionModel Model => _model;
    /// <summary>True when the session loaded the model itself (it may then change it freely; a lent one must be given back as it was).</summary>
    protected bool OwnsModel => _lentModel is null;
    protected RunFolder Folder { get; private set; } = null!;
    /// <summary>The saved state being resumed, or null for a fresh run.</summary>
    protected TrainingState? Resumed => _resumed;
    protected int TotalSteps => _totalSteps;
    protected BatchPlanner Planner => _planner;

    /// <summary>Refuses a run whose token string is in no instance caption (its vectors would never train).</summary>
    protected void RequireWordInCaptions(string alternative)
    {
        var word = _c.TokenString!;
        if (!_planner.DistinctImages.Any(d => !d.Image.IsRegularization && CaptionProcessor.ContainsWord(d.Image.Caption, word)))
            throw new SdLoraException($"no caption contains the token string '{word}': write it into the captions or instance-prompt (\"a photo of {word}\"), {alternative}") { Setting = "token-string" };
    }
    protected CancellationToken Cancellation => _ct;
    /// <summary>The parameters the optimizer trains (gradient clipping and the NaN check run over them).</summary>
    protected IReadOnlyList<Parameter> Trainable { get; set; } = [];
    protected TrainingOptimizer Optimizer { get; set; } = null!;

    protected void Info(string message) => _progress?.Report(new TrainingProgress(TrainingPhase.Info, 0, 0, Message: message));

    /// <summary>What the result is called in messages: "LoRA", "model", "embedding".</summary>
    protected abstract string OutputKind { get; }

    /// <summary>Phase 4: creates what is trained and <see cref="Optimizer"/>, sets <see cref="Trainable"/>; on resume restores them from <c>state/</c>.</summary>
    protected abstract void CreateTrainable();

    /// <summary>Where the result of <paramref name="epoch"/> (null: the final one) is written.</summary>
    protected abstract string OutputPath(int? epoch);

    /// <summary>Writes the result to <paramref name="path"/> with <paramref name="metadata"/> (the training metadata plus save fields).</summary>
    protected abstract void WriteOutput(string path, Dictionary<string, string> metadata);

    /// <summary>The trained weights for <c>state/</c>, by name, as they are (converted to fp32 on save when lower precision would lose nothing: see <see cref="TrainingStateStore"/>).</summary>
    protected abstract IEnumerable<KeyValuePair<string, Tensor>> StateWeights();

    /// <summary>File name of the weights in <c>state/</c> (<c>lora.safetensors</c>, <c>model.safetensors</c>, <c>embedding.safetensors</c>).</summary>
    protected abstract string StateWeightsFile { get; }

    /// <summary>Copies the weights saved in <c>state/</c> back into what is trained (the optimizer state is restored by the base).</summary>
    protected abstract void RestoreWeights(SafetensorsFile weights);

    /// <summary>Undoes what <see cref="CreateTrainable"/> did to the model (adapters, trained weights, token rows); runs even after a failure.</summary>
    protected abstract void ReleaseTrainable();

    /// <summary>True when the text conditioning of <paramref name="items"/> at <paramref name="step"/> needs gradients (computed live, not cached).</summary>
    protected virtual bool TextNeedsGradient(int step, IReadOnlyList<BatchItem> items) => false;

    /// <summary>Deletes an old epoch's result (a file or a diffusers folder) with whatever was written beside it.</summary>
    protected virtual void DeleteOutput(string outputPath)
    {
        if (Directory.Exists(outputPath)) Directory.Delete(outputPath, true);
        else File.Delete(outputPath);
    }

    /// <summary>The tokenizer captions go through (textual inversion adds its words to it).</summary>
    protected virtual ClipTokenizer Tokenizer => _model.Tokenizer;

    /// <summary>Called after every optimizer step (textual inversion: nothing else in the table may change).</summary>
    protected virtual void AfterOptimizerStep(int step) { }

    /// <summary>Training mode for the run (and after sampling); the base sets gradient checkpointing on the UNet.</summary>
    protected virtual void SetTrainMode()
    {
        // train() on the UNet turns on its gradient checkpointing (its blocks check the training flag).
        _model.UNet.GradientCheckpointing = _c.GradientCheckpointing;
        if (_c.GradientCheckpointing) _model.UNet.train(); else _model.UNet.eval();
        _model.TextEncoder.eval();
    }

    /// <summary>Eval mode for sampling.</summary>
    protected virtual void SetEvalMode()
    {
        _model.UNet.eval();
        _model.TextEncoder.eval();
    }

    /// <summary>The run's metadata for the result: kohya's <c>ss_*</c> training fields by default.</summary>
    protected virtual Dictionary<string, string> TrainingMetadata(TrainingDataSummary data, DateTimeOffset startedAt) =>
        _c.ToKohyaMetadata(data, startedAt, Optimizer.Describe());

    /// <summary>
    /// A sample image's generation options and how its PNG parameters name what was trained, for the result in
    /// <paramref name="outputFile"/> (null or missing when these weights were not saved to a file).
    /// </summary>
    protected virtual (Txt2ImgOptions Options, Func<GenerationParameters, GenerationParameters> Describe) SampleSetup(Txt2ImgOptions options, string? outputFile) =>
        (options, p => p);

    /// <summary>Extra text for the "training stopped" messages (what to lower).</summary>
    protected virtual string LearningRateHint => $"learning-rate (now {_c.EffectiveUnetLr:G3})";

    /// <summary>The dropout generator LoRA modules draw from, reseeded per micro-batch (see <see cref="Step"/>).</summary>
    protected Generator DropoutGenerator => _dropoutGenerator ??= new Generator((ulong)_c.Seed, CPU);

    private double Elapsed() => (_resumed?.ElapsedSeconds ?? 0) + _clock.Elapsed.TotalSeconds;

    // ---------------------------------------------------------------------------------------------------------------
    // Phase 1: output folder, resume position, dataset, model. Cheap checks of everything the user gave come first,
    // so a typo fails in a second, not after the model has loaded.
    // ---------------------------------------------------------------------------------------------------------------
    private void Prepare()
    {
        var c = _c;
        Folder = RunFolder.Prepare(c.Output!, c.Resume, c.Overwrite, [c.Data, c.RegData, c.Model]);
        if (Folder.IsResume)
        {
            _resumed = TrainingStateStore.Read(Folder);
            if (_resumed.ConfigHash != TrainingStateStore.ConfigHash(c))
            {
                var diffs = File.Exists(Folder.RunJson) ? TrainingStateStore.Differences(RunFolder.ReadRunJson(Folder.RunJson), c) : [];
                throw new SdLoraException($"resume: the settings differ from the saved run in {Folder.Path}" +
                    (diffs.Count > 0 ? $" ({string.Join("; ", diffs.Take(5))})" : "") +
                    ": resume with the same settings (only the run length, save/sample cadence and output may change), or start over with overwrite")
                { Setting = "resume" };
            }
            Info($"resuming at step {_resumed.Step} (epoch {_resumed.Epoch + 1}, batch {_resumed.BatchInEpoch})");
        }
        _dataset = DreamBoothDataset.Load(c);
        _samplePrompts = c.SamplePrompts is null ? null : SamplePrompts.Read(c.SamplePrompts, c.Resolution.Width, c.Resolution.Height, c.Seed);
        Folder.WriteRunJson(c);

        if (_lentModel is not null) _model = _lentModel;
        else
        {
            var compute = ResumedCompute(c) ?? c.ResolveCompute(CpuProbe ?? (() => CpuKernelProbe.Measure(null, _ct)));
            Info($"loading {c.Model} ({compute.Describe()} on {compute.Device}{(ComputeOptions.IsAuto(c.Dtype) && c.MixedPrecision == "no" ? ", chosen by dtype auto" : "")})");
            _model = _timer.Time("model load", () => StableDiffusionModel.Load(c.Model!, null, compute, ct: _ct));
        }
        _pipeline = new Txt2ImgPipeline(_model);
    }

    /// <summary>
    /// On resume, the compute the saved run recorded (<see cref="TrainingState.Compute"/>), so that a re-measured
    /// probe cannot switch the kernels mid-run; null when there is none to reuse: a fresh run, a state written before
    /// it was recorded, another device, or native bf16 recorded but this CPU has no bf16 hardware (a run moved to
    /// another machine), where the choice is made afresh.
    /// </summary>
    private ComputeOptions? ResumedCompute(TrainingConfig c)
    {
        if (_resumed?.Compute is not { } recorded) return null;
        var device = ComputeOptions.ParseDevice(c.Device);
        if (device.type != DeviceType.CPU) return null;
        ComputeOptions saved;
        try { saved = ComputeOptions.ParseRecorded(recorded); }
        catch (SdLoraException) { return null; } // a hand-edited state.json only costs a fresh choice
        if (saved.CpuLowPrecision == CpuLowPrecision.Native && saved.DType != ScalarType.Float32 && !CpuFeatures.Detect().HasBf16Hardware)
        {
            Info($"the saved run computed in {saved.Describe()}, which this CPU has no hardware for: choosing afresh");
            return null;
        }
        return saved;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Phase 2: prior-preservation class images, generated once into class-data (default <output>/class_images) and
    // reused by later runs.
    // ---------------------------------------------------------------------------------------------------------------
    private void GenerateClassImages()
    {
        var c = _c;
        if (c.ClassPrompt is null || c.RegData is not null || c.EffectiveNumClassImages <= 0)
        {
            Info(_dataset.Summary());
            return;
        }
        var classDir = c.ClassData ?? Folder.ClassImagesDir;
        // The class-image cache shared by runs, CPU defaults for sampler and steps, and an estimate of every phase
        // from one measured step before generating (on a CPU this is minutes to hours).
        var job = new ClassImageJob(_pipeline, c, classDir);
        int missing = _timer.Time("class images", () => job.Prepare(Info));
        if (missing > 0 && _resumed is null) _timer.Time("estimate", () => PrintEstimate(missing));
        _classImagesGenerated = _timer.Time("class images", () => job.Generate(missing, _progress, _ct));
        _c = c with { ClassData = classDir };
        _dataset = DreamBoothDataset.Load(_c);
        Info(_dataset.Summary());
    }

    /// <summary>Measures one step of each kind and prints what every phase should take.</summary>
    private void PrintEstimate(int classImages)
    {
        var c = _c;
        var t = WorkflowEstimate.Measure(_model, c.Resolution.Width, c.Resolution.Height, _ct);
        // Before the class images exist, kohya's balancing will double the draws per epoch once they do.
        var planner = new BatchPlanner(_dataset, BucketManager.FromConfig(c), c.TrainBatchSize, c.Seed, CaptionRules(), c.RandomCrop, c.FlipAug);
        int steps = c.MaxTrainSteps ?? 2 * planner.TotalSteps(c);
        int latentImages = c.CacheLatents ? (planner.DistinctImages.Count() + c.EffectiveNumClassImages) * (c.FlipAug ? 2 : 1) : 0;
        var phases = WorkflowEstimate.Estimate(t, classImages, c.EffectiveClassImageSteps, latentImages, steps, c.GradientCheckpointing,
            _samplePrompts?.Count ?? 0, 20);
        Info($"estimate from one measured step at {t.Width}x{t.Height} (CFG step {t.CfgStepSeconds:F1} s, VAE decode {t.DecodeSeconds:F1} s, encode {t.EncodeSeconds:F1} s):");
        foreach (var p in phases) Info($"  {p.Phase,-15} ~ {WorkflowEstimate.Format(p.Seconds),-14} {p.Detail}");
        Info($"  {"total",-15} ~ {WorkflowEstimate.Format(phases.Sum(p => p.Seconds))}");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Phase 3: buckets and batches; latents encoded once by the VAE (text embeddings are cached as they are first
    // needed, see Context).
    // ---------------------------------------------------------------------------------------------------------------
    private void PlanAndCache()
    {
        var c = _c;
        _planner = new BatchPlanner(_dataset, BucketManager.FromConfig(c), c.TrainBatchSize, c.Seed, CaptionRules(), c.RandomCrop, c.FlipAug);
        _totalSteps = _planner.TotalSteps(c);
        _totalEpochs = _planner.TotalEpochs(c);
        _bucketSummary = _planner.BucketSummary();
        Info(_bucketSummary);
        Info($"{_totalSteps} steps: {_totalEpochs} epoch(s) x {_planner.StepsPerEpoch(c.GradientAccumulationSteps)} steps " +
             $"(batch {c.TrainBatchSize}, gradient accumulation {c.GradientAccumulationSteps})");
        if (!c.CacheLatents) return;
        _timer.Time("latent caching", CacheLatents);
    }

    private void CacheLatents()
    {
        var c = _c;
        _latentCache = new LatentCache(c.CacheLatentsToDisk ? Folder.LatentCacheDir : null, keepInMemory: true);
        var todo = _planner.DistinctImages
            .SelectMany(d => c.FlipAug ? new[] { (d.Image, d.Placement, Flip: false), (d.Image, d.Placement, Flip: true) } : [(d.Image, d.Placement, Flip: false)])
            .ToList();
        for (int i = 0; i < todo.Count; i++)
        {
            _ct.ThrowIfCancellationRequested();
            _latentCache.GetOrEncode(todo[i].Image, todo[i].Placement, todo[i].Flip, Encode);
            _progress?.Report(new TrainingProgress(TrainingPhase.CachingLatents, i + 1, todo.Count));
        }
    }

    /// <summary>How captions are augmented (and, for textual inversion, rewritten) per draw.</summary>
    protected virtual CaptionProcessor CaptionRules() => CaptionProcessor.FromConfig(_c);

    /// <summary>The VAE posterior mean (not a sample), scaled: cached latents are then a pure function of the image.</summary>
    private Tensor Encode(RgbImage image)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var x = image.ToTensor().to(_model.Compute.DType).to(_model.Compute.Device);
        return (_model.Vae.Encode(x).Mean.to(ScalarType.Float32) * _model.Vae.ScalingFactor).MoveToOuterDisposeScope();
    }

    /// <summary>Creates the optimizer the settings name over <paramref name="groups"/>; on resume, loads its saved state and the weights.</summary>
    protected void CreateOptimizer(IEnumerable<ParamGroup> groups)
    {
        var list = groups.ToList();
        Trainable = list.SelectMany(g => g.Parameters).ToList();
        Optimizer = OptimizerFactory.Create(_c, list);
        if (_resumed is not null) TrainingStateStore.Restore(Folder, StateWeightsFile, RestoreWeights, Optimizer);
    }

    private void OpenOutputs()
    {
        var c = _c;
        _lossLog = LossLog.Open(Folder.LossCsv, _resumed?.Step);
        _tensorBoard = new TensorBoardLog(Folder.LogsDir);
        _startedAt = _resumed is null ? DateTimeOffset.UtcNow : DateTimeOffset.FromUnixTimeMilliseconds((long)(_resumed.TrainingStartedAt * 1000));
        _metadataBase = TrainingMetadata(TrainingDataSummary.From(c, _dataset, _planner), _startedAt);
        if (_resumed is not null) _metadataBase["ss_session_id"] = _resumed.SessionId;
        _lastOutput = _resumed?.LastLora;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Phase 5: the loop over epochs and optimizer steps, with saves and samples at epoch ends.
    // ---------------------------------------------------------------------------------------------------------------
    private TrainingResult Train()
    {
        var c = _c;
        SetTrainMode();
        int step = _resumed?.Step ?? 0;
        int startEpoch = _resumed?.Epoch ?? 0, startBatch = _resumed?.BatchInEpoch ?? 0;
        int stepsThisSession = 0;
        var sessionClock = Stopwatch.StartNew();
        LossRow? lastRow = _lossLog.Rows.Count > 0 ? _lossLog.Rows[^1] : null;
        int nextEpoch = startEpoch, nextBatch = startBatch; // where the next micro-batch comes from

        for (int epoch = startEpoch; epoch < _totalEpochs && step < _totalSteps; epoch++)
        {
            var batches = _planner.Epoch(epoch);
            int b = epoch == startEpoch ? startBatch : 0;
            while (b < batches.Count && step < _totalSteps)
            {
                var stepClock = Stopwatch.StartNew();
                double loss = Step(step, epoch, batches, ref b);
                _timer.Add("training", stepClock.Elapsed.TotalSeconds);
                step++; stepsThisSession++;
                nextEpoch = epoch; nextBatch = b;

                double lr = Optimizer.LastLearningRates[0];
                lastRow = _lossLog.Append(step, epoch + 1, loss, lr, Elapsed());
                _tensorBoard?.Write(lastRow);
                double rate = stepsThisSession / Math.Max(1e-9, sessionClock.Elapsed.TotalSeconds);
                _progress?.Report(new TrainingProgress(TrainingPhase.Training, step, _totalSteps, epoch + 1, _totalEpochs, rate,
                    TimeSpan.FromSeconds((_totalSteps - step) / Math.Max(1e-9, rate)), lastRow.Loss, lastRow.SmoothedLoss, lr));

                if (_ct.IsCancellationRequested)
                {
                    _progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, _totalSteps, epoch + 1, _totalEpochs, Message: "cancelled: saving"));
                    SaveOutput(OutputPath(null), step, epoch + 1);
                    SaveState(step, epoch, b);
                    return Result(_lastOutput, step, cancelled: true, lastRow);
                }
            }
            if (b >= batches.Count) { nextEpoch = epoch + 1; nextBatch = 0; }

            bool lastEpoch = epoch + 1 >= _totalEpochs || step >= _totalSteps;
            string? epochOutput = null;
            if (!lastEpoch && c.SaveEveryNEpochs is { } se && (epoch + 1) % se == 0)
            {
                _progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, _totalSteps, epoch + 1, _totalEpochs, Message: $"epoch {epoch + 1}"));
                epochOutput = SaveOutput(OutputPath(epoch + 1), step, epoch + 1);
                SaveState(step, epoch + 1, 0);
                KeepLastEpochOutputs(epoch + 1);
            }
            if (!lastEpoch && c.SampleEveryNEpochs is { } sa && (epoch + 1) % sa == 0)
                Sample($"e{epoch + 1:D6}", epochOutput);
        }

        int perEpoch = Math.Max(1, _planner.StepsPerEpoch(c.GradientAccumulationSteps));
        int epochs = Math.Clamp((step + perEpoch - 1) / perEpoch, 1, _totalEpochs);
        _progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, _totalSteps, epochs, _totalEpochs, Message: "final"));
        var finalOutput = SaveOutput(OutputPath(null), step, epochs);
        SaveState(step, nextEpoch, nextBatch);
        Sample("final", finalOutput);
        return Result(finalOutput, step, cancelled: false, lastRow);
    }

    private TrainingResult Result(string? output, int step, bool cancelled, LossRow? lastRow) =>
        new(Folder.Path, output, _saved.Where(p => File.Exists(p) || Directory.Exists(p)).ToList(), Folder.LossCsv,
            File.Exists(Folder.LossPng) ? Folder.LossPng : null, _samples, step, _totalSteps, _totalEpochs, cancelled, lastRow?.SmoothedLoss,
            TimeSpan.FromSeconds(Elapsed()), _bucketSummary, _classImagesGenerated, _c.Method, _timer.Phases.ToList());

    /// <summary>
    /// One optimizer step: up to <c>gradient-accumulation-steps</c> micro-batches of <paramref name="batches"/> from
    /// <paramref name="batch"/> on (advanced past them), their mean loss backpropagated, gradients clipped, the
    /// scheduled LR applied. Returns the mean loss.
    /// </summary>
    private double Step(int step, int epoch, IReadOnlyList<Batch> batches, ref int batch)
    {
        var c = _c;
        var dev = _model.Compute.Device;
        var lossOptions = new DiffusionLossOptions(c.VParameterization, c.MinSnrGamma);
        int micro = Math.Min(c.GradientAccumulationSteps, batches.Count - batch);
        double lossSum = 0;
        for (int m = 0; m < micro; m++, batch++)
        {
            using var scope = torch.NewDisposeScope();
            var items = batches[batch].Items;
            var latents = Latents(items);
            var context = Context(step, items);
            var weights = torch.tensor(items.Select(i => i.IsRegularization ? (float)c.PriorLossWeight : 1f).ToArray()).to(dev);
            var (noise, timesteps) = DrawNoise(c, epoch, batch, latents.shape, _model.Schedule.NumTrainTimesteps);
            // Dropout masks of this micro-batch, from (seed, epoch, batch) like the noise: a resumed run draws the same.
            _dropoutGenerator?.manual_seed((long)(SeededRandom.Mix(c.Seed, 0xD20, epoch, batch) & 0x7FFFFFFF));
            using var loss = DiffusionLoss.Compute(_model.UNet, _model.Schedule, latents, noise.to(dev), timesteps.to(dev), context, weights,
                lossOptions, _model.Compute.DType);
            double value = loss.Loss.item<float>();
            if (!double.IsFinite(value))
                throw new SdLoraException($"training stopped: the loss became {value} at step {step + 1} (epoch {epoch + 1}); " +
                    (_lastOutput is not null ? $"the last good {OutputKind} is {_lastOutput}" : $"no {OutputKind} had been saved yet") +
                    $". Lower {LearningRateHint}, keep max-grad-norm on, or set mixed-precision no")
                { Setting = "learning-rate" };
            (loss.Loss / micro).backward();
            lossSum += value;
        }
        GradientClipping.ClipGradNorm(Trainable, c.MaxGradNorm);
        Optimizer.Step(_schedule.Multiplier(step));
        Optimizer.ZeroGrad();
        AfterOptimizerStep(step);
        return lossSum / micro;
    }

    /// <summary>
    /// The noise <c>[B,C,H,W]</c> (plus <c>noise-offset</c> times a per-channel constant) and timesteps uniform in
    /// [0, T) of micro-batch <paramref name="batch"/> of <paramref name="epoch"/>: from a CPU generator seeded by
    /// (seed, epoch, batch), so they do not depend on what ran before.
    /// </summary>
    public static (Tensor Noise, Tensor Timesteps) DrawNoise(TrainingConfig c, int epoch, int batch, long[] shape, int numTrainTimesteps)
    {
        using var g = new Generator(SeededRandom.Mix(c.Seed, 0x7015E, epoch, batch), CPU);
        using var scope = torch.NewDisposeScope();
        var noise = torch.randn(shape, ScalarType.Float32, CPU, generator: g);
        if (c.NoiseOffset > 0) noise = noise + c.NoiseOffset * torch.randn([shape[0], shape[1], 1, 1], ScalarType.Float32, CPU, generator: g);
        var timesteps = torch.randint(0, numTrainTimesteps, [shape[0]], ScalarType.Int64, CPU, generator: g);
        return (noise.MoveToOuterDisposeScope(), timesteps.MoveToOuterDisposeScope());
    }

    /// <summary>Text conditioning of a micro-batch: encoded live when it needs gradients, else cached per caption.</summary>
    private Tensor Context(int step, IReadOnlyList<BatchItem> items)
    {
        var dev = _model.Compute.Device;
        using var scope = torch.NewDisposeScope();
        if (TextNeedsGradient(step, items))
        {
            var ids = torch.tensor(items.SelectMany(i => Tokenizer.EncodeForModel(i.Caption)).ToArray(), [items.Count, 77], ScalarType.Int64).to(dev);
            return _model.TextEncoder.Encode(ids, _c.ClipSkip).MoveToOuterDisposeScope();
        }
        var rows = new List<Tensor>();
        foreach (var item in items)
        {
            if (!_embeddingCache.TryGetValue(item.Caption, out var e))
            {
                using var noGrad = torch.no_grad();
                var ids = torch.tensor(Tokenizer.EncodeForModel(item.Caption), [1, 77], ScalarType.Int64).to(dev);
                e = _model.TextEncoder.Encode(ids, _c.ClipSkip);
                e.DetachFromDisposeScope();
                _embeddingCache[item.Caption] = e;
            }
            rows.Add(e);
        }
        return torch.cat(rows, 0).MoveToOuterDisposeScope();
    }

    /// <summary>Forgets the cached text conditionings (when the text encoder changes, e.g. while it trains).</summary>
    protected void ClearTextCache()
    {
        foreach (var e in _embeddingCache.Values) e.Dispose();
        _embeddingCache.Clear();
    }

    private Tensor Latents(IReadOnlyList<BatchItem> items)
    {
        using var scope = torch.NewDisposeScope();
        var rows = items.Select(i => _latentCache is not null
            ? _latentCache.GetOrEncode(i.Image, i.Placement, i.Flip, Encode)
            : Encode(i.Placement.Apply(RgbImage.Load(i.Image.Path), i.Flip))).ToList();
        return torch.cat(rows, 0).to(_model.Compute.Device).MoveToOuterDisposeScope();
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Saving and sampling.
    // ---------------------------------------------------------------------------------------------------------------

    /// <summary>Writes the result with the run's metadata; refuses weights that are no longer finite.</summary>
    private string SaveOutput(string path, int step, int epoch) => _timer.Time("saving", () => SaveOutputNow(path, step, epoch));

    private string SaveOutputNow(string path, int step, int epoch)
    {
        using (torch.no_grad())
            if (Trainable.Any(p => !p.isfinite().all().item<bool>()))
                throw new SdLoraException($"training stopped: the {OutputKind} weights became NaN or infinite by step {step} (epoch {epoch}); " +
                    (_lastOutput is not null ? $"the last good {OutputKind} is {_lastOutput}" : $"no {OutputKind} had been saved yet") +
                    $". Lower {LearningRateHint} or keep max-grad-norm on")
                { Setting = "learning-rate" };
        var md = new Dictionary<string, string>(_metadataBase)
        {
            ["ss_epoch"] = epoch.ToString(CultureInfo.InvariantCulture),
            ["ss_steps"] = step.ToString(CultureInfo.InvariantCulture),
            ["ss_training_finished_at"] = (DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0).ToString("R", CultureInfo.InvariantCulture),
        };
        if (_model.ShortHash is { } h) md["ss_new_sd_model_hash"] = h;
        WriteOutput(path, md);
        _saved.Remove(path);
        _saved.Add(path);
        _lastOutput = path;
        return path;
    }

    /// <summary>The dtype results are saved in (<c>save-precision</c>: fp16 unless asked otherwise).</summary>
    protected ScalarType SaveDType => _c.SavePrecision switch { "fp32" or "float" => ScalarType.Float32, "bf16" => ScalarType.BFloat16, _ => ScalarType.Float16 };

    /// <summary>The resumable state (weights, optimizer, position) and the loss plot so far.</summary>
    private void SaveState(int step, int epoch, int batchInEpoch) => _timer.Time("saving", () =>
    {
        TrainingStateStore.Save(Folder, new TrainingState(step, epoch, batchInEpoch, Elapsed(), TrainingStateStore.ConfigHash(Config),
            _metadataBase["ss_session_id"], _startedAt.ToUnixTimeMilliseconds() / 1000.0, _lastOutput, _model.Compute.Record()),
            StateWeightsFile, StateWeights(), Optimizer);
        if (_lossLog.Rows.Count > 0) _lossLog.RenderPlot(Folder.LossPng);
    });

    /// <summary><c>save-last-n-epochs</c>: deletes the epoch results older than the last N (kohya keeps N the same way).</summary>
    private void KeepLastEpochOutputs(int currentEpoch)
    {
        if (_c.SaveLastNEpochs is not { } keep) return;
        var old = Folder.EpochOutputs(_c.EffectiveOutputName).Where(kv => kv.Key <= currentEpoch).OrderByDescending(kv => kv.Key).Skip(keep);
        foreach (var (_, path) in old.ToList())
        {
            DeleteOutput(path);
            _saved.Remove(path);
        }
    }

    /// <summary>Sample images from the sample prompts with the weights as trained so far (see <see cref="SampleSetup"/>).</summary>
    private void Sample(string label, string? outputFile)
    {
        if (_samplePrompts is null) return;
        var c = _c;
        var sampleClock = Stopwatch.StartNew();
        SetEvalMode();
        using (torch.no_grad())
        {
            Directory.CreateDirectory(Folder.SamplesDir);
            for (int i = 0; i < _samplePrompts.Count && !_ct.IsCancellationRequested; i++)
            {
                _progress?.Report(new TrainingProgress(TrainingPhase.Sampling, i, _samplePrompts.Count, Message: label));
                var p = _samplePrompts[i];
                var (options, describe) = SampleSetup(new Txt2ImgOptions
                {
                    Prompt = p.Prompt, NegativePrompt = p.NegativePrompt, Width = p.Width, Height = p.Height, Steps = p.Steps,
                    CfgScale = p.CfgScale, Seed = p.Seed, Sampler = "DDIM", ClipSkip = c.ClipSkip,
                }, outputFile);
                var result = _pipeline.Generate(options, null, _ct);
                foreach (var img in result.Images)
                {
                    var path = Path.Combine(Folder.SamplesDir, $"{c.EffectiveOutputName}_{label}_{i:D2}.png");
                    PngFile.Write(path, img.Image, new Dictionary<string, string> { ["parameters"] = describe(img.Parameters).ToInfotext() });
                    _samples.Add(path);
                }
            }
            _progress?.Report(new TrainingProgress(TrainingPhase.Sampling, _samplePrompts.Count, _samplePrompts.Count, Message: label));
        }
        SetTrainMode();
        _timer.Add("sampling", sampleClock.Elapsed.TotalSeconds);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // The end: whatever happened, the model leaves as it came (a lent one) or is disposed (our own).
    // ---------------------------------------------------------------------------------------------------------------
    private void Release()
    {
        _tensorBoard?.Dispose();
        if (_model is not null) ReleaseTrainable();
        Optimizer?.Dispose();
        _dropoutGenerator?.Dispose();
        _latentCache?.Dispose();
        ClearTextCache();
        if (_model is null) return;
        if (_lentModel is null) _model.Dispose();
        else
        {
            _model.UNet.GradientCheckpointing = _lentModes.Checkpointing;
            _model.UNet.train(_lentModes.UNetTraining);
            _model.TextEncoder.train(_lentModes.TextEncoderTraining);
            _model.Vae.train(_lentModes.VaeTraining);
        }
    }
}
