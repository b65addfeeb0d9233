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
/// the other phases count <see cref="Done"/> of <see cref="Total"/> (images or optimizer steps).
/// </summary>
public sealed record TrainingProgress(TrainingPhase Phase, int Done, int Total, int Epoch = 0, int TotalEpochs = 0,
    double StepsPerSecond = 0, TimeSpan Eta = default, double Loss = double.NaN, double SmoothedLoss = double.NaN,
    double LearningRate = 0, string Message = "");

/// <summary>What a run produced.</summary>
/// <param name="Phases">Wall time of each phase of this session: model load, class images, latent caching, training, sampling, saving.</param>
public sealed record TrainingResult(string OutputDir, string? LoraPath, IReadOnlyList<string> SavedLoras, string LossCsv, string? LossPng,
    IReadOnlyList<string> Samples, int Steps, int TotalSteps, int Epochs, bool Cancelled, double? SmoothedLoss, TimeSpan Elapsed,
    string BucketSummary, int ClassImagesGenerated, IReadOnlyList<PhaseTime>? Phases = null);

/// <summary>
/// DreamBooth-LoRA training of a frozen Stable Diffusion 1.x model, kohya-style:
/// <list type="number">
/// <item>prepare <c>--output</c> (refusing to clobber another run), read the dataset, load the model frozen in the compute dtype;</item>
/// <item>with <c>--class-prompt</c>, generate the missing class images (prior preservation) with the base model and reuse existing ones;</item>
/// <item>plan buckets and batches (a pure function of seed and epoch), cache latents with the VAE, cache caption embeddings
///   when the text encoder is frozen;</item>
/// <item>attach a fresh LoRA to the UNet (and text encoder) with one LR per part, and for each optimizer step run
///   <c>--gradient-accumulation-steps</c> micro-batches through <see cref="DiffusionLoss"/>, clip, schedule the LR and step;</item>
/// <item>save the LoRA (kohya format + <c>ss_*</c> metadata), loss.csv/loss.png, samples and <c>state/</c> every
///   <c>--save-every-n-epochs</c>, at the end and on cancellation.</item>
/// </list>
/// Noise and timesteps come from a generator seeded by (seed, epoch, batch index), so a resumed run is the same as an
/// uninterrupted one.
/// </summary>
public sealed class DreamBoothLoraTrainer
{
    public TrainingConfig Config { get; }
    private readonly Func<CpuKernelProbeResult>? _cpuProbe;

    /// <param name="config">The run's settings; checked at once.</param>
    /// <param name="cpuProbe">
    /// How <c>dtype auto</c> (and CPU bf16) learn this CPU's bf16 speed, e.g. a cached probe
    /// (<see cref="CpuKernelProbeCache"/>); null measures afresh with <see cref="CpuKernelProbe.Measure"/> when needed.
    /// </param>
    public DreamBoothLoraTrainer(TrainingConfig config, Func<CpuKernelProbeResult>? cpuProbe = null)
    {
        Config = config.Validate();
        _cpuProbe = cpuProbe;
    }

    public TrainingResult Train(IProgress<TrainingProgress>? progress = null, CancellationToken ct = default)
    {
        var clock = Stopwatch.StartNew();
        var timer = new PhaseTimer();
        var c = Config;
        if (c.Threads is { } threads) torch.set_num_threads(threads);
        void Info(string message) => progress?.Report(new TrainingProgress(TrainingPhase.Info, 0, 0, Message: message));

        // ---- output folder, resume position ----
        var run = RunFolder.Prepare(c.Output!, c.Resume, c.Overwrite);
        TrainingState? resumed = null;
        if (run.IsResume)
        {
            resumed = TrainingStateStore.Read(run);
            if (resumed.ConfigHash != TrainingStateStore.ConfigHash(c))
            {
                var diffs = File.Exists(run.RunJson) ? TrainingStateStore.Differences(RunFolder.ReadRunJson(run.RunJson), c) : [];
                throw new SdLoraException($"--resume: the settings differ from the saved run in {run.Path}" +
                    (diffs.Count > 0 ? $" ({string.Join("; ", diffs.Take(5))})" : "") +
                    ": resume with the same settings (only the run length, save/sample cadence and --output may change), or start over with --overwrite");
            }
            Info($"resuming at step {resumed.Step} (epoch {resumed.Epoch + 1}, batch {resumed.BatchInEpoch})");
        }
        run.WriteRunJson(c);

        // ---- dataset and model ----
        var dataset = DreamBoothDataset.Load(c);
        var compute = c.ResolveCompute(_cpuProbe ?? (() => CpuKernelProbe.Measure(null, ct)));
        Info($"loading {c.Model} ({compute.Describe()} on {compute.Device}{(ComputeOptions.IsAuto(c.Dtype) && c.MixedPrecision == "no" ? ", chosen by dtype auto" : "")})");
        using var model = timer.Time("model load", () => StableDiffusionModel.Load(c.Model!, null, compute));
        var pipeline = new Txt2ImgPipeline(model);

        int generated = 0;
        if (c.ClassPrompt is not null && c.RegData is null && c.EffectiveNumClassImages > 0)
        {
            var classDir = c.ClassData ?? run.ClassImagesDir;
            var classImages = new ClassImageJob(pipeline, c, classDir);
            int missing = timer.Time("class images", () => classImages.Prepare(Info));
            if (missing > 0 && resumed is null) timer.Time("estimate", () => PrintEstimate(model, c, dataset, missing, samplePromptCount: c.SamplePrompts is null ? 0 : SamplePrompts.Read(c.SamplePrompts, c.Resolution.Width, c.Resolution.Height, c.Seed).Count, Info, ct));
            generated = timer.Time("class images", () => classImages.Generate(missing, progress, ct));
            c = c with { ClassData = classDir };
            dataset = DreamBoothDataset.Load(c);
        }
        Info(dataset.Summary());

        var planner = new BatchPlanner(dataset, BucketManager.FromConfig(c), c.TrainBatchSize, c.Seed, CaptionProcessor.FromConfig(c), c.RandomCrop, c.FlipAug);
        int totalSteps = planner.TotalSteps(c), totalEpochs = planner.TotalEpochs(c);
        string bucketSummary = planner.BucketSummary();
        Info(bucketSummary);
        Info($"{totalSteps} steps: {totalEpochs} epoch(s) x {planner.StepsPerEpoch(c.GradientAccumulationSteps)} steps " +
             $"(batch {c.TrainBatchSize}, gradient accumulation {c.GradientAccumulationSteps})");

        // ---- caches ----
        var dev = compute.Device;
        var unet = model.UNet;
        using var latentCache = c.CacheLatents ? new LatentCache(c.CacheLatentsToDisk ? run.LatentCacheDir : null, keepInMemory: true) : null;
        Tensor Encode(RgbImage img)
        {
            using var noGrad = torch.no_grad();
            using var scope = torch.NewDisposeScope();
            var x = img.ToTensor().to(compute.DType).to(dev);
            // The posterior mean (not a sample): cached latents are then a pure function of the image.
            return (model.Vae.Encode(x).Mean.to(ScalarType.Float32) * model.Vae.ScalingFactor).MoveToOuterDisposeScope();
        }
        if (latentCache is not null) timer.Time("latent caching", () =>
        {
            var todo = planner.DistinctImages.SelectMany(d => c.FlipAug ? new[] { (d.Image, d.Placement, false), (d.Image, d.Placement, true) } : [(d.Image, d.Placement, false)]).ToList();
            for (int i = 0; i < todo.Count; i++)
            {
                ct.ThrowIfCancellationRequested();
                latentCache.GetOrEncode(todo[i].Image, todo[i].Placement, todo[i].Item3, Encode);
                progress?.Report(new TrainingProgress(TrainingPhase.CachingLatents, i + 1, todo.Count));
            }
        });

        // ---- the LoRA network and optimizer ----
        // kohya's init, drawn from a generator of our own: the run stays reproducible whatever else draws random numbers.
        using var initGenerator = new Generator((ulong)c.Seed, CPU);
        using var network = LoraNetwork.Create(unet, model.TextEncoder, new LoraNetworkOptions
        {
            Rank = c.NetworkDim, Alpha = c.NetworkAlpha, ConvRank = c.ConvDim, ConvAlpha = c.ConvAlpha,
            TrainUnet = c.TrainUnet, TrainTextEncoder = c.TrainTextEncoder, Dropout = c.NetworkDropout ?? 0,
            UnetTargets = c.ConvDim is null ? LoraUnetTargets.KohyaDefault : LoraUnetTargets.KohyaDefault | LoraUnetTargets.Convs,
        }, initGenerator);
        network.Attach();
        var groups = new List<ParamGroup>();
        var unetParams = network.UnetModules.SelectMany(m => m.parameters()).ToList();
        var teParams = network.TextEncoderModules.SelectMany(m => m.parameters()).ToList();
        if (unetParams.Count > 0) groups.Add(new ParamGroup("unet", unetParams, c.EffectiveUnetLr));
        if (teParams.Count > 0) groups.Add(new ParamGroup("text_encoder", teParams, c.EffectiveTextEncoderLr));
        var allParams = groups.SelectMany(g => g.Parameters).ToList();
        using var optimizer = OptimizerFactory.Create(c, groups);
        var schedule = LrSchedule.FromConfig(c, totalSteps);
        if (resumed is not null) TrainingStateStore.Restore(run, network, optimizer);
        Info($"LoRA: {network.UnetModules.Count()} UNet + {network.TextEncoderModules.Count()} text-encoder modules, " +
             $"{allParams.Sum(p => p.numel()):N0} trainable parameters, {optimizer.Describe()}");

        // ---- conditioning ----
        bool trainTe = teParams.Count > 0;
        using var embeddingCache = new EmbeddingCache();
        Tensor Context(IReadOnlyList<BatchItem> items)
        {
            using var scope = torch.NewDisposeScope();
            if (trainTe)
            {
                var ids = torch.tensor(items.SelectMany(i => model.Tokenizer.EncodeForModel(i.Caption)).ToArray(), [items.Count, 77], ScalarType.Int64).to(dev);
                return model.TextEncoder.Encode(ids, c.ClipSkip).MoveToOuterDisposeScope();
            }
            var rows = new List<Tensor>();
            foreach (var item in items)
            {
                if (!embeddingCache.TryGetValue(item.Caption, out var e))
                {
                    using var noGrad = torch.no_grad();
                    var ids = torch.tensor(model.Tokenizer.EncodeForModel(item.Caption), [1, 77], ScalarType.Int64).to(dev);
                    e = model.TextEncoder.Encode(ids, c.ClipSkip);
                    e.DetachFromDisposeScope();
                    embeddingCache[item.Caption] = e;
                }
                rows.Add(e);
            }
            return torch.cat(rows, 0).MoveToOuterDisposeScope();
        }
        Tensor Latents(IReadOnlyList<BatchItem> items)
        {
            using var scope = torch.NewDisposeScope();
            var rows = items.Select(i => latentCache is not null
                ? latentCache.GetOrEncode(i.Image, i.Placement, i.Flip, Encode)
                : Encode(i.Placement.Apply(RgbImage.Load(i.Image.Path), i.Flip))).ToList();
            return torch.cat(rows, 0).to(dev).MoveToOuterDisposeScope();
        }

        // ---- outputs ----
        var lossLog = LossLog.Open(run.LossCsv, resumed?.Step);
        using var tensorBoard = new TensorBoardLog(Path.Combine(run.Path, "logs"));
        var startedAt = resumed is null ? DateTimeOffset.UtcNow : DateTimeOffset.FromUnixTimeMilliseconds((long)(resumed.TrainingStartedAt * 1000));
        var metadataBase = c.ToKohyaMetadata(TrainingDataSummary.From(c, dataset, planner), startedAt, optimizer.Describe());
        if (resumed is not null) metadataBase["ss_session_id"] = resumed.SessionId;
        string sessionId = metadataBase["ss_session_id"];
        var saved = new List<string>();
        var samples = new List<string>();
        string? lastLora = resumed?.LastLora;
        var samplePrompts = c.SamplePrompts is null ? null : SamplePrompts.Read(c.SamplePrompts, c.Resolution.Width, c.Resolution.Height, c.Seed);
        var saveDType = c.SavePrecision switch { "fp32" or "float" => ScalarType.Float32, "bf16" => ScalarType.BFloat16, _ => ScalarType.Float16 };
        double elapsedBefore = resumed?.ElapsedSeconds ?? 0;
        double Elapsed() => elapsedBefore + clock.Elapsed.TotalSeconds;

        string SaveLora(string path, int step, int epoch) => timer.Time("saving", () =>
        {
            if (network.Parameters().Any(p => !p.isfinite().all().item<bool>()))
                throw new SdLoraException($"training stopped: the LoRA weights became NaN or infinite by step {step} (epoch {epoch}); " +
                    (lastLora is not null ? $"the last good LoRA is {lastLora}" : "no LoRA had been saved yet") +
                    $". Lower --learning-rate (now {c.EffectiveUnetLr:G3}) or keep --max-grad-norm on");
            var md = new Dictionary<string, string>(metadataBase)
            {
                ["ss_epoch"] = epoch.ToString(CultureInfo.InvariantCulture),
                ["ss_steps"] = step.ToString(CultureInfo.InvariantCulture),
                ["ss_training_finished_at"] = (DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0).ToString("R", CultureInfo.InvariantCulture),
            };
            if (model.ShortHash is { } h) md["ss_new_sd_model_hash"] = h;
            network.Save(path, md, saveDType);
            saved.Add(path);
            lastLora = path;
            return path;
        });
        void SaveState(int step, int epoch, int batchInEpoch) => timer.Time("saving", () =>
        {
            TrainingStateStore.Save(run, new TrainingState(step, epoch, batchInEpoch, Elapsed(), TrainingStateStore.ConfigHash(Config),
                sessionId, startedAt.ToUnixTimeMilliseconds() / 1000.0, lastLora), network, optimizer);
            if (lossLog.Rows.Count > 0) lossLog.RenderPlot(run.LossPng);
        });
        void Sample(string label)
        {
            if (samplePrompts is null) return;
            var sampleClock = Stopwatch.StartNew();
            unet.eval(); model.TextEncoder.eval(); network.Train(false);
            using (torch.no_grad())
            {
                Directory.CreateDirectory(run.SamplesDir);
                for (int i = 0; i < samplePrompts.Count && !ct.IsCancellationRequested; i++)
                {
                    progress?.Report(new TrainingProgress(TrainingPhase.Sampling, i, samplePrompts.Count, Message: label));
                    var p = samplePrompts[i];
                    var result = pipeline.Generate(new Txt2ImgOptions
                    {
                        Prompt = p.Prompt, NegativePrompt = p.NegativePrompt, Width = p.Width, Height = p.Height, Steps = p.Steps,
                        CfgScale = p.CfgScale, Seed = p.Seed, Sampler = "DDIM", ClipSkip = c.ClipSkip,
                    }, null, ct);
                    foreach (var img in result.Images)
                    {
                        var path = Path.Combine(run.SamplesDir, $"{c.OutputName}_{label}_{i:D2}.png");
                        PngFile.Write(path, img.Image, new Dictionary<string, string> { ["parameters"] = img.Parameters.ToInfotext() });
                        samples.Add(path);
                    }
                }
                progress?.Report(new TrainingProgress(TrainingPhase.Sampling, samplePrompts.Count, samplePrompts.Count, Message: label));
            }
            SetTrainMode();
            timer.Add("sampling", sampleClock.Elapsed.TotalSeconds);
        }
        void SetTrainMode()
        {
            // train() on the UNet turns on its gradient checkpointing (its blocks check the training flag).
            unet.GradientCheckpointing = c.GradientCheckpointing;
            if (c.GradientCheckpointing) unet.train(); else unet.eval();
            if (trainTe) model.TextEncoder.train(); else model.TextEncoder.eval();
            network.Train(true);
        }
        SetTrainMode();

        // ---- the loop ----
        var lossOptions = new DiffusionLossOptions(c.VParameterization, c.MinSnrGamma);
        int step = resumed?.Step ?? 0;
        int startEpoch = resumed?.Epoch ?? 0, startBatch = resumed?.BatchInEpoch ?? 0;
        int accumulation = c.GradientAccumulationSteps;
        int stepsThisSession = 0;
        var sessionClock = Stopwatch.StartNew();
        LossRow? lastRow = lossLog.Rows.Count > 0 ? lossLog.Rows[^1] : null;
        bool cancelled = false;
        int posEpoch = startEpoch, posBatch = startBatch; // where the next micro-batch comes from

        for (int epoch = startEpoch; epoch < totalEpochs && step < totalSteps && !cancelled; epoch++)
        {
            var batches = planner.Epoch(epoch);
            int b = epoch == startEpoch ? startBatch : 0;
            for (; b < batches.Count && step < totalSteps; )
            {
                int micro = Math.Min(accumulation, batches.Count - b);
                double lossSum = 0;
                var stepClock = Stopwatch.StartNew();
                for (int m = 0; m < micro; m++, b++)
                {
                    using var scope = torch.NewDisposeScope();
                    var items = batches[b].Items;
                    var latents = Latents(items);
                    var context = Context(items);
                    var weights = torch.tensor(items.Select(i => i.IsRegularization ? (float)c.PriorLossWeight : 1f).ToArray()).to(dev);
                    var (noise, timesteps) = DrawNoise(c, epoch, b, latents.shape, model.Schedule.NumTrainTimesteps);
                    torch.manual_seed((long)(SeededRandom.Mix(c.Seed, 0xD20, epoch, b) & 0x7FFFFFFF)); // LoRA dropout, if any
                    using var loss = DiffusionLoss.Compute(unet, model.Schedule, latents, noise.to(dev), timesteps.to(dev), context, weights, lossOptions, compute.DType);
                    double value = loss.Loss.item<float>();
                    if (!double.IsFinite(value))
                        throw new SdLoraException($"training stopped: the loss became {value} at step {step + 1} (epoch {epoch + 1}); " +
                            (lastLora is not null ? $"the last good LoRA is {lastLora}" : "no LoRA had been saved yet") +
                            $". Lower --learning-rate (now {c.EffectiveUnetLr:G3}), keep --max-grad-norm on, or use --mixed-precision no");
                    (loss.Loss / micro).backward();
                    lossSum += value;
                }
                GradientClipping.ClipGradNorm(allParams, c.MaxGradNorm);
                optimizer.Step(schedule.Multiplier(step));
                optimizer.ZeroGrad();
                step++; stepsThisSession++;
                posEpoch = epoch; posBatch = b;
                timer.Add("training", stepClock.Elapsed.TotalSeconds);

                double lr = optimizer.LastLearningRates[0];
                lastRow = lossLog.Append(step, epoch + 1, lossSum / micro, lr, Elapsed());
                tensorBoard.Write(lastRow);
                double rate = stepsThisSession / Math.Max(1e-9, sessionClock.Elapsed.TotalSeconds);
                progress?.Report(new TrainingProgress(TrainingPhase.Training, step, totalSteps, epoch + 1, totalEpochs, rate,
                    TimeSpan.FromSeconds((totalSteps - step) / Math.Max(1e-9, rate)), lastRow.Loss, lastRow.SmoothedLoss, lr));

                if (ct.IsCancellationRequested)
                {
                    progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, totalSteps, epoch + 1, totalEpochs, Message: "cancelled: saving"));
                    SaveLora(run.LoraPath(c.OutputName), step, epoch + 1);
                    SaveState(step, epoch, b);
                    cancelled = true;
                    break;
                }
            }
            if (cancelled) break;
            if (b >= batches.Count) { posEpoch = epoch + 1; posBatch = 0; }

            bool lastEpoch = epoch + 1 >= totalEpochs || step >= totalSteps;
            if (!lastEpoch && c.SaveEveryNEpochs is { } se && (epoch + 1) % se == 0)
            {
                progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, totalSteps, epoch + 1, totalEpochs, Message: $"epoch {epoch + 1}"));
                SaveLora(run.LoraPath(c.OutputName, epoch + 1), step, epoch + 1);
                SaveState(step, epoch + 1, 0);
            }
            if (!lastEpoch && c.SampleEveryNEpochs is { } sa && (epoch + 1) % sa == 0)
                Sample($"e{epoch + 1:D6}");
        }

        string? finalLora = null;
        if (!cancelled)
        {
            int perEpoch = Math.Max(1, planner.StepsPerEpoch(accumulation));
            int epochs = Math.Clamp((step + perEpoch - 1) / perEpoch, 1, totalEpochs);
            progress?.Report(new TrainingProgress(TrainingPhase.Saving, step, totalSteps, epochs, totalEpochs, Message: "final"));
            finalLora = SaveLora(run.LoraPath(c.OutputName), step, epochs);
            SaveState(step, posEpoch, posBatch);
            Sample("final");
        }
        else finalLora = lastLora;

        return new TrainingResult(run.Path, finalLora, saved, run.LossCsv, File.Exists(run.LossPng) ? run.LossPng : null, samples, step, totalSteps,
            totalEpochs, cancelled, lastRow?.SmoothedLoss, TimeSpan.FromSeconds(Elapsed()), bucketSummary, generated, timer.Phases);
    }

    /// <summary>
    /// The noise <c>[B,C,H,W]</c> (plus <c>--noise-offset</c> times a per-channel constant) and timesteps uniform in
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

    /// <summary>Caption -> text-encoder output, for runs that do not train the text encoder.</summary>
    private sealed class EmbeddingCache : Dictionary<string, Tensor>, IDisposable
    {
        public void Dispose()
        {
            foreach (var t in Values) t.Dispose();
            Clear();
        }
    }

    /// <summary>Measures one step of each kind and prints what every phase should take (a CPU run is minutes to hours).</summary>
    private static void PrintEstimate(StableDiffusionModel model, TrainingConfig c, DreamBoothDataset dataset, int classImages, int samplePromptCount,
        Action<string> info, CancellationToken ct)
    {
        var t = WorkflowEstimate.Measure(model, c.Resolution.Width, c.Resolution.Height, ct);
        // Before the class images exist, kohya's balancing will double the draws per epoch once they do.
        var planner = new BatchPlanner(dataset, BucketManager.FromConfig(c), c.TrainBatchSize, c.Seed, CaptionProcessor.FromConfig(c), c.RandomCrop, c.FlipAug);
        int steps = c.MaxTrainSteps ?? 2 * planner.TotalSteps(c);
        int latentImages = c.CacheLatents ? (planner.DistinctImages.Count() + c.EffectiveNumClassImages) * (c.FlipAug ? 2 : 1) : 0;
        var phases = WorkflowEstimate.Estimate(t, classImages, c.EffectiveClassImageSteps, latentImages, steps, c.GradientCheckpointing,
            samplePromptCount, 20);
        info($"estimate from one measured step at {t.Width}x{t.Height} (CFG step {t.CfgStepSeconds:F1} s, VAE decode {t.DecodeSeconds:F1} s, encode {t.EncodeSeconds:F1} s):");
        foreach (var p in phases) info($"  {p.Phase,-15} ~ {WorkflowEstimate.Format(p.Seconds),-14} {p.Detail}");
        info($"  {"total",-15} ~ {WorkflowEstimate.Format(phases.Sum(p => p.Seconds))}");
    }
}
