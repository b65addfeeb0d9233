using System.Diagnostics;
using System.Globalization;
using SdLora.Imaging;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;

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

/// <summary>What a run produced. <see cref="SavedLoras"/> lists the LoRA files of this run that still exist.</summary>
/// <param name="Phases">Wall time of each phase of this session: model load, class images, latent caching, training, sampling, saving.</param>
public sealed record TrainingResult(string OutputDir, string? LoraPath, IReadOnlyList<string> SavedLoras, string LossCsv, string? LossPng,
    IReadOnlyList<string> Samples, int Steps, int TotalSteps, int Epochs, bool Cancelled, double? SmoothedLoss, TimeSpan Elapsed,
    string BucketSummary, int ClassImagesGenerated, IReadOnlyList<PhaseTime>? Phases = null);

/// <summary>
/// One DreamBooth-LoRA training run of a frozen Stable Diffusion 1.x model, kohya-style, phase by phase:
/// <list type="number">
/// <item><see cref="Prepare"/>: the output folder (refusing to clobber another run; resume position), the dataset, the model;</item>
/// <item><see cref="GenerateClassImages"/>: with a class prompt, the missing prior-preservation images, made by the base model;</item>
/// <item><see cref="PlanAndCache"/>: buckets and batches (a pure function of seed and epoch), latents encoded once by the VAE;</item>
/// <item><see cref="CreateNetwork"/>: a fresh LoRA on the UNet (and text encoder), one LR per part, the optimizer;</item>
/// <item><see cref="Step"/>: one optimizer step of <c>gradient-accumulation-steps</c> micro-batches through <see cref="DiffusionLoss"/>;</item>
/// <item><see cref="SaveLora"/>/<see cref="SaveState"/>: the LoRA (kohya format + <c>ss_*</c> metadata), loss.csv/png and
///   <c>state/</c>, every <c>save-every-n-epochs</c>, at the end and on cancellation; <see cref="Sample"/>: sample images.</item>
/// </list>
/// Every random draw comes from generators of the run's own (LoRA init from the seed; noise, timesteps and dropout
/// masks from (seed, epoch, micro-batch)), so a resumed run equals an uninterrupted one and nothing process-wide is
/// touched: torch's thread count and global generator belong to the host.
/// <para>
/// The model is either loaded from <see cref="TrainingConfig.Model"/> (and disposed at the end) or lent by the caller:
/// a lent model is not disposed, and every adapter and mode the session set on it is taken off again when
/// <see cref="Run"/> returns or throws, so the model computes exactly what it did before.
/// </para>
/// </summary>
public sealed class LoraTrainingSession
{
    private readonly StableDiffusionModel? _lentModel;
    private readonly (bool UNetTraining, bool TextEncoderTraining, bool VaeTraining, bool Checkpointing) _lentModes;
    private readonly Func<CpuKernelProbeResult>? _cpuProbe;
    private readonly PhaseTimer _timer = new();
    private bool _started;

    // ---- set by Prepare ----
    private TrainingConfig _c;
    private IProgress<TrainingProgress>? _progress;
    private CancellationToken _ct;
    private readonly Stopwatch _clock = new();
    private RunFolder _run = null!;
    private TrainingState? _resumed;
    private DreamBoothDataset _dataset = null!;
    private StableDiffusionModel _model = null!;
    private Txt2ImgPipeline _pipeline = null!;
    private List<SamplePrompt>? _samplePrompts;
    private int _classImagesGenerated;

    // ---- set by PlanAndCache and CreateNetwork ----
    private BatchPlanner _planner = null!;
    private int _totalSteps, _totalEpochs;
    private string _bucketSummary = "";
    private LatentCache? _latentCache;
    private readonly Dictionary<string, Tensor> _embeddingCache = [];
    private LoraNetwork _network = null!;
    private TrainingOptimizer _optimizer = null!;
    private List<TorchSharp.Modules.Parameter> _trainable = [];
    private bool _trainTextEncoder;
    private LrSchedule _schedule = null!;
    private Generator _dropoutGenerator = null!;

    // ---- outputs ----
    private LossLog _lossLog = null!;
    private TensorBoardLog? _tensorBoard;
    private Dictionary<string, string> _metadataBase = [];
    private DateTimeOffset _startedAt;
    private readonly List<string> _saved = [];
    private readonly List<string> _samples = [];
    private string? _lastLora;

    /// <param name="config">The run's settings; checked at once (<see cref="TrainingConfig.Validate"/>).</param>
    /// <param name="model">
    /// A model already loaded by the caller (e.g. a server's model host), used instead of loading
    /// <see cref="TrainingConfig.Model"/>, which may then be left empty. Its device and dtype are used as they are; the
    /// session never disposes it and leaves it as it found it.
    /// </param>
    /// <param name="cpuProbe">
    /// How <c>dtype auto</c> (and CPU bf16) learn this CPU's bf16 speed when the session loads the model, e.g. a cached
    /// probe (<see cref="CpuKernelProbeCache"/>); null measures afresh with <see cref="CpuKernelProbe.Measure"/> when needed.
    /// </param>
    public LoraTrainingSession(TrainingConfig config, StableDiffusionModel? model = null, Func<CpuKernelProbeResult>? cpuProbe = null)
    {
        _cpuProbe = cpuProbe;
        if (model is not null && string.IsNullOrWhiteSpace(config.Model)) config = config with { Model = model.SourcePath ?? model.Name };
        Config = config.Validate();
        _c = Config;
        _lentModel = model;
        if (model is not null) _lentModes = (model.UNet.training, model.TextEncoder.training, model.Vae.training, model.UNet.GradientCheckpointing);
    }

    /// <summary>The settings as given (the session's working copy also records where class images went).</summary>
    public TrainingConfig Config { get; }

    /// <summary>
    /// Runs the whole training. Cancelling <paramref name="ct"/> during training saves the LoRA and state after the
    /// current step and returns a result with <see cref="TrainingResult.Cancelled"/>; cancelling before training began
    /// (class images, latent caching) throws <see cref="OperationCanceledException"/> with nothing to save.
    /// A session runs once.
    /// </summary>
    public TrainingResult Run(IProgress<TrainingProgress>? progress = null, CancellationToken ct = default)
    {
        if (_started) throw new InvalidOperationException("a LoraTrainingSession runs once; create a new one for another run");
        _started = true;
        _progress = progress;
        _ct = ct;
        _clock.Start();
        try
        {
            Prepare();
            GenerateClassImages();
            PlanAndCache();
            CreateNetwork();
            OpenOutputs();
            return Train();
        }
        finally { Release(); }
    }

    private void Info(string message) => _progress?.Report(new TrainingProgress(TrainingPhase.Info, 0, 0, Message: message));
    private double Elapsed() => (_resumed?.ElapsedSeconds ?? 0) + _clock.Elapsed.TotalSeconds;

    // ---------------------------------------------------------------------------------------------------------------
    // Phase 1: output folder, resume position, dataset, model. Cheap checks of everything the user gave come first,
    // so a typo fails in a second, not after the model has loaded.
    // ---------------------------------------------------------------------------------------------------------------
    private void Prepare()
    {
        var c = _c;
        _run = RunFolder.Prepare(c.Output!, c.Resume, c.Overwrite, [c.Data, c.RegData, c.Model]);
        if (_run.IsResume)
        {
            _resumed = TrainingStateStore.Read(_run);
            if (_resumed.ConfigHash != TrainingStateStore.ConfigHash(c))
            {
                var diffs = File.Exists(_run.RunJson) ? TrainingStateStore.Differences(RunFolder.ReadRunJson(_run.RunJson), c) : [];
                throw new SdLoraException($"resume: the settings differ from the saved run in {_run.Path}" +
                    (diffs.Count > 0 ? $" ({string.Join("; ", diffs.Take(5))})" : "") +
                    ": resume with the same settings (only the run length, save/sample cadence and output may change), or start over with overwrite")
                { Setting = "resume" };
            }
            Info($"resuming at step {_resumed.Step} (epoch {_resumed.Epoch + 1}, batch {_resumed.BatchInEpoch})");
        }
        _dataset = DreamBoothDataset.Load(c);
        _samplePrompts = c.SamplePrompts is null ? null : SamplePrompts.Read(c.SamplePrompts, c.Resolution.Width, c.Resolution.Height, c.Seed);
        _run.WriteRunJson(c);

        if (_lentModel is not null) _model = _lentModel;
        else
        {
            var compute = c.ResolveCompute(_cpuProbe ?? (() => CpuKernelProbe.Measure(null, _ct)));
            Info($"loading {c.Model} ({compute.Describe()} on {compute.Device}{(ComputeOptions.IsAuto(c.Dtype) && c.MixedPrecision == "no" ? ", chosen by dtype auto" : "")})");
            _model = _timer.Time("model load", () => StableDiffusionModel.Load(c.Model!, null, compute, ct: _ct));
        }
        _pipeline = new Txt2ImgPipeline(_model);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Phase 2: prior-preservation class images, generated once into class-data (default <output>/class_images) and
    // reused by later runs, also through the class-image cache shared by runs (ClassImageJob). Before generating, every
    // phase's time is estimated from one measured step, since on a CPU this is minutes to hours.
    // ---------------------------------------------------------------------------------------------------------------
    private void GenerateClassImages()
    {
        var c = _c;
        if (c.ClassPrompt is null || c.RegData is not null || c.EffectiveNumClassImages <= 0)
        {
            Info(_dataset.Summary());
            return;
        }
        var classDir = c.ClassData ?? _run.ClassImagesDir;
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
        var planner = new BatchPlanner(_dataset, BucketManager.FromConfig(c), c.TrainBatchSize, c.Seed, CaptionProcessor.FromConfig(c), c.RandomCrop, c.FlipAug);
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
        _planner = new BatchPlanner(_dataset, BucketManager.FromConfig(c), c.TrainBatchSize, c.Seed, CaptionProcessor.FromConfig(c), c.RandomCrop, c.FlipAug);
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
        _latentCache = new LatentCache(c.CacheLatentsToDisk ? _run.LatentCacheDir : null, keepInMemory: true);
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

    /// <summary>The VAE posterior mean (not a sample), scaled: cached latents are then a pure function of the image.</summary>
    private Tensor Encode(RgbImage image)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var x = image.ToTensor().to(_model.Compute.DType).to(_model.Compute.Device);
        return (_model.Vae.Encode(x).Mean.to(ScalarType.Float32) * _model.Vae.ScalingFactor).MoveToOuterDisposeScope();
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Phase 4: the LoRA network (attached to the model), its optimizer and LR schedule; on resume, the saved weights
    // and optimizer state.
    // ---------------------------------------------------------------------------------------------------------------
    private void CreateNetwork()
    {
        var c = _c;
        // kohya's init, drawn from a generator of our own: the run stays reproducible whatever else draws random numbers.
        using var initGenerator = new Generator((ulong)c.Seed, CPU);
        _network = LoraNetwork.Create(_model.UNet, _model.TextEncoder, new LoraNetworkOptions
        {
            Rank = c.NetworkDim, Alpha = c.NetworkAlpha, ConvRank = c.ConvDim, ConvAlpha = c.ConvAlpha,
            TrainUnet = c.TrainUnet, TrainTextEncoder = c.TrainTextEncoder, Dropout = c.NetworkDropout ?? 0,
            UnetTargets = c.ConvDim is null ? LoraUnetTargets.KohyaDefault : LoraUnetTargets.KohyaDefault | LoraUnetTargets.Convs,
        }, initGenerator);
        _dropoutGenerator = new Generator((ulong)c.Seed, CPU);
        _network.DropoutGenerator = _dropoutGenerator;
        _network.Attach();

        var groups = new List<ParamGroup>();
        var unetParams = _network.UnetModules.SelectMany(m => m.parameters()).ToList();
        var teParams = _network.TextEncoderModules.SelectMany(m => m.parameters()).ToList();
        if (unetParams.Count > 0) groups.Add(new ParamGroup("unet", unetParams, c.EffectiveUnetLr));
        if (teParams.Count > 0) groups.Add(new ParamGroup("text_encoder", teParams, c.EffectiveTextEncoderLr));
        _trainable = groups.SelectMany(g => g.Parameters).ToList();
        _trainTextEncoder = teParams.Count > 0;
        _optimizer = OptimizerFactory.Create(c, groups);
        _schedule = LrSchedule.FromConfig(c, _totalSteps);
        if (_resumed is not null) TrainingStateStore.Restore(_run, _network, _optimizer);
        Info($"LoRA: {_network.UnetModules.Count()} UNet + {_network.TextEncoderModules.Count()} text-encoder modules, " +
             $"{_trainable.Sum(p => p.numel()):N0} trainable parameters, {_optimizer.Describe()}");
    }

    private void OpenOutputs()
    {
        var c = _c;
        _lossLog = LossLog.Open(_run.LossCsv, _resumed?.Step);
        _tensorBoard = new TensorBoardLog(_run.LogsDir);
        _startedAt = _resumed is null ? DateTimeOffset.UtcNow : DateTimeOffset.FromUnixTimeMilliseconds((long)(_resumed.TrainingStartedAt * 1000));
        _metadataBase = c.ToKohyaMetadata(TrainingDataSummary.From(c, _dataset, _planner), _startedAt, _optimizer.Describe());
        if (_resumed is not null) _metadataBase["ss_session_id"] = _resumed.SessionId;
        _lastLora = _resumed?.LastLora;
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

                double lr = _optimizer.LastLearningRates[0];
                lastRow = _lossLog.Append(step, epoch + 1, loss, lr, Elapsed());
                _tensorBoard?.Write(lastRow);
                double rate = stepsThisSession / Math.Max(1e-9, sessionClock.Elapsed.TotalSeconds);
                _progress?.Report(new TrainingProgress(TrainingPhase.Training, step, _totalSteps, epoch + 1, _totalEpochs, rate,
                    TimeSpan.FromSeconds((_totalSteps - step) / Math.Max(1e-9, rate)), lastRow.Loss, lastRow.SmoothedLoss, lr));

                if (_ct.IsCancellationRequested)
                {
                    _progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, _totalSteps, epoch + 1, _totalEpochs, Message: "cancelled: saving"));
                    SaveLora(_run.LoraPath(c.OutputName), step, epoch + 1);
                    SaveState(step, epoch, b);
                    return Result(_lastLora, step, cancelled: true, lastRow);
                }
            }
            if (b >= batches.Count) { nextEpoch = epoch + 1; nextBatch = 0; }

            bool lastEpoch = epoch + 1 >= _totalEpochs || step >= _totalSteps;
            string? epochLora = null;
            if (!lastEpoch && c.SaveEveryNEpochs is { } se && (epoch + 1) % se == 0)
            {
                _progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, _totalSteps, epoch + 1, _totalEpochs, Message: $"epoch {epoch + 1}"));
                epochLora = SaveLora(_run.LoraPath(c.OutputName, epoch + 1), step, epoch + 1);
                SaveState(step, epoch + 1, 0);
                KeepLastEpochLoras(epoch + 1);
            }
            if (!lastEpoch && c.SampleEveryNEpochs is { } sa && (epoch + 1) % sa == 0)
                Sample($"e{epoch + 1:D6}", epochLora);
        }

        int perEpoch = Math.Max(1, _planner.StepsPerEpoch(c.GradientAccumulationSteps));
        int epochs = Math.Clamp((step + perEpoch - 1) / perEpoch, 1, _totalEpochs);
        _progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, _totalSteps, epochs, _totalEpochs, Message: "final"));
        var finalLora = SaveLora(_run.LoraPath(c.OutputName), step, epochs);
        SaveState(step, nextEpoch, nextBatch);
        Sample("final", finalLora);
        return Result(finalLora, step, cancelled: false, lastRow);
    }

    private TrainingResult Result(string? lora, int step, bool cancelled, LossRow? lastRow) =>
        new(_run.Path, lora, _saved.Where(File.Exists).ToList(), _run.LossCsv, File.Exists(_run.LossPng) ? _run.LossPng : null, _samples,
            step, _totalSteps, _totalEpochs, cancelled, lastRow?.SmoothedLoss, TimeSpan.FromSeconds(Elapsed()), _bucketSummary, _classImagesGenerated,
            _timer.Phases.ToList());

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
            var context = Context(items);
            var weights = torch.tensor(items.Select(i => i.IsRegularization ? (float)c.PriorLossWeight : 1f).ToArray()).to(dev);
            var (noise, timesteps) = DrawNoise(c, epoch, batch, latents.shape, _model.Schedule.NumTrainTimesteps);
            // Dropout masks of this micro-batch, from (seed, epoch, batch) like the noise: a resumed run draws the same.
            _dropoutGenerator.manual_seed((long)(SeededRandom.Mix(c.Seed, 0xD20, epoch, batch) & 0x7FFFFFFF));
            using var loss = DiffusionLoss.Compute(_model.UNet, _model.Schedule, latents, noise.to(dev), timesteps.to(dev), context, weights,
                lossOptions, _model.Compute.DType);
            double value = loss.Loss.item<float>();
            if (!double.IsFinite(value))
                throw new SdLoraException($"training stopped: the loss became {value} at step {step + 1} (epoch {epoch + 1}); " +
                    (_lastLora is not null ? $"the last good LoRA is {_lastLora}" : "no LoRA had been saved yet") +
                    $". Lower learning-rate (now {c.EffectiveUnetLr:G3}), keep max-grad-norm on, or set mixed-precision no")
                { Setting = "learning-rate" };
            (loss.Loss / micro).backward();
            lossSum += value;
        }
        GradientClipping.ClipGradNorm(_trainable, c.MaxGradNorm);
        _optimizer.Step(_schedule.Multiplier(step));
        _optimizer.ZeroGrad();
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

    /// <summary>Text conditioning of a micro-batch: encoded live when the text encoder trains, else cached per caption.</summary>
    private Tensor Context(IReadOnlyList<BatchItem> items)
    {
        var dev = _model.Compute.Device;
        using var scope = torch.NewDisposeScope();
        if (_trainTextEncoder)
        {
            var ids = torch.tensor(items.SelectMany(i => _model.Tokenizer.EncodeForModel(i.Caption)).ToArray(), [items.Count, 77], ScalarType.Int64).to(dev);
            return _model.TextEncoder.Encode(ids, _c.ClipSkip).MoveToOuterDisposeScope();
        }
        var rows = new List<Tensor>();
        foreach (var item in items)
        {
            if (!_embeddingCache.TryGetValue(item.Caption, out var e))
            {
                using var noGrad = torch.no_grad();
                var ids = torch.tensor(_model.Tokenizer.EncodeForModel(item.Caption), [1, 77], ScalarType.Int64).to(dev);
                e = _model.TextEncoder.Encode(ids, _c.ClipSkip);
                e.DetachFromDisposeScope();
                _embeddingCache[item.Caption] = e;
            }
            rows.Add(e);
        }
        return torch.cat(rows, 0).MoveToOuterDisposeScope();
    }

    private Tensor Latents(IReadOnlyList<BatchItem> items)
    {
        using var scope = torch.NewDisposeScope();
        var rows = items.Select(i => _latentCache is not null
            ? _latentCache.GetOrEncode(i.Image, i.Placement, i.Flip, Encode)
            : Encode(i.Placement.Apply(RgbImage.Load(i.Image.Path), i.Flip))).ToList();
        return torch.cat(rows, 0).to(_model.Compute.Device).MoveToOuterDisposeScope();
    }

    private void SetTrainMode()
    {
        // train() on the UNet turns on its gradient checkpointing (its blocks check the training flag).
        _model.UNet.GradientCheckpointing = _c.GradientCheckpointing;
        if (_c.GradientCheckpointing) _model.UNet.train(); else _model.UNet.eval();
        if (_trainTextEncoder) _model.TextEncoder.train(); else _model.TextEncoder.eval();
        _network.Train(true);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Saving and sampling.
    // ---------------------------------------------------------------------------------------------------------------

    /// <summary>Writes the LoRA in kohya format with the run's <c>ss_*</c> metadata; refuses weights that are no longer finite.</summary>
    private string SaveLora(string path, int step, int epoch) => _timer.Time("saving", () => SaveLoraNow(path, step, epoch));

    private string SaveLoraNow(string path, int step, int epoch)
    {
        if (_network.Parameters().Any(p => !p.isfinite().all().item<bool>()))
            throw new SdLoraException($"training stopped: the LoRA weights became NaN or infinite by step {step} (epoch {epoch}); " +
                (_lastLora is not null ? $"the last good LoRA is {_lastLora}" : "no LoRA had been saved yet") +
                $". Lower learning-rate (now {_c.EffectiveUnetLr:G3}) or keep max-grad-norm on")
            { Setting = "learning-rate" };
        var md = new Dictionary<string, string>(_metadataBase)
        {
            ["ss_epoch"] = epoch.ToString(CultureInfo.InvariantCulture),
            ["ss_steps"] = step.ToString(CultureInfo.InvariantCulture),
            ["ss_training_finished_at"] = (DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0).ToString("R", CultureInfo.InvariantCulture),
        };
        if (_model.ShortHash is { } h) md["ss_new_sd_model_hash"] = h;
        var dtype = _c.SavePrecision switch { "fp32" or "float" => ScalarType.Float32, "bf16" => ScalarType.BFloat16, _ => ScalarType.Float16 };
        _network.Save(path, md, dtype);
        _saved.Remove(path);
        _saved.Add(path);
        _lastLora = path;
        return path;
    }

    /// <summary>The resumable state (weights, optimizer, position) and the loss plot so far.</summary>
    private void SaveState(int step, int epoch, int batchInEpoch) => _timer.Time("saving", () =>
    {
        TrainingStateStore.Save(_run, new TrainingState(step, epoch, batchInEpoch, Elapsed(), TrainingStateStore.ConfigHash(Config),
            _metadataBase["ss_session_id"], _startedAt.ToUnixTimeMilliseconds() / 1000.0, _lastLora), _network, _optimizer);
        if (_lossLog.Rows.Count > 0) _lossLog.RenderPlot(_run.LossPng);
    });

    /// <summary><c>save-last-n-epochs</c>: deletes the epoch LoRA files older than the last N (kohya keeps N the same way).</summary>
    private void KeepLastEpochLoras(int currentEpoch)
    {
        if (_c.SaveLastNEpochs is not { } keep) return;
        var old = _run.EpochLoras(_c.OutputName).Where(kv => kv.Key <= currentEpoch).OrderByDescending(kv => kv.Key).Skip(keep);
        foreach (var (_, file) in old.ToList())
        {
            File.Delete(file);
            _saved.Remove(file);
        }
    }

    /// <summary>
    /// Sample images from the sample prompts with the LoRA as trained so far. Their A1111 <c>parameters</c> name the
    /// LoRA as a <c>&lt;lora:NAME:1&gt;</c> tag, with its hash when <paramref name="loraFile"/> holds these weights.
    /// </summary>
    private void Sample(string label, string? loraFile)
    {
        if (_samplePrompts is null) return;
        var c = _c;
        var sampleClock = Stopwatch.StartNew();
        _model.UNet.eval(); _model.TextEncoder.eval(); _network.Train(false);
        string loraName = Path.GetFileNameWithoutExtension(loraFile ?? _run.LoraPath(c.OutputName));
        IReadOnlyList<KeyValuePair<string, string>> loraHashes = loraFile is not null && File.Exists(loraFile)
            ? [new(loraName, LoraSet.A1111ShortHash(loraFile))] : [];
        using (torch.no_grad())
        {
            Directory.CreateDirectory(_run.SamplesDir);
            for (int i = 0; i < _samplePrompts.Count && !_ct.IsCancellationRequested; i++)
            {
                _progress?.Report(new TrainingProgress(TrainingPhase.Sampling, i, _samplePrompts.Count, Message: label));
                var p = _samplePrompts[i];
                var result = _pipeline.Generate(new Txt2ImgOptions
                {
                    Prompt = p.Prompt, NegativePrompt = p.NegativePrompt, Width = p.Width, Height = p.Height, Steps = p.Steps,
                    CfgScale = p.CfgScale, Seed = p.Seed, Sampler = "DDIM", ClipSkip = c.ClipSkip,
                }, null, _ct);
                foreach (var img in result.Images)
                {
                    var path = Path.Combine(_run.SamplesDir, $"{c.OutputName}_{label}_{i:D2}.png");
                    var parameters = img.Parameters with { Prompt = $"{p.Prompt} <lora:{loraName}:1>", LoraHashes = loraHashes };
                    PngFile.Write(path, img.Image, new Dictionary<string, string> { ["parameters"] = parameters.ToInfotext() });
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
        _network?.Dispose(); // detaches every adapter from the model's layers
        _optimizer?.Dispose();
        _dropoutGenerator?.Dispose();
        _latentCache?.Dispose();
        foreach (var e in _embeddingCache.Values) e.Dispose();
        _embeddingCache.Clear();
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
