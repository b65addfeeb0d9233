using System.Globalization;

namespace SdLora.Training;

/// <summary>
/// Every setting of a training run: a DreamBooth LoRA (<see cref="Method"/> <c>lora</c>, the default), a full DreamBooth
/// fine-tune (<c>dreambooth</c>) or a textual-inversion embedding (<c>textual-inversion</c>). <see cref="TrainingSettings"/>
/// describes each one (name, kohya name, description, allowed values); the names are kebab-case forms of the property
/// names (<c>TrainBatchSize</c> -> <c>train-batch-size</c>), which TOML files, <c>run.json</c> and the command line use.
/// LoRA defaults follow the kohya colab: rank 32 / alpha 16, constant LR 1e-4 (UNet) and 5e-5 (text encoder), 512 px,
/// 10 repeats, 10 epochs, AdamW. The learning rates differ per method: start from <see cref="ForMethod"/> (or switch
/// with <see cref="WithMethod"/>) rather than setting <see cref="Method"/> alone.
/// </summary>
public sealed partial record TrainingConfig
{
    // ---- method ----
    /// <summary><c>lora</c>, <c>dreambooth</c> or <c>textual-inversion</c> (see <see cref="Methods"/>).</summary>
    public string Method { get; init; } = MethodLora;

    // ---- paths ----
    /// <summary>Base model: a .safetensors/.ckpt file or a diffusers folder.</summary>
    public string? Model { get; init; }
    /// <summary>Training images: a plain folder, a kohya root (<c>10_sks dog</c> sub-folders) or a .zip of either.</summary>
    public string? Data { get; init; }
    public string? Output { get; init; }
    /// <summary>File name of the result without extension; null: the method's own (<see cref="EffectiveOutputName"/>).</summary>
    public string? OutputName { get; init; }
    /// <summary>kohya regularization root with <c>&lt;repeats&gt;_&lt;class&gt;</c> sub-folders.</summary>
    public string? RegData { get; init; }
    /// <summary>Where generated class images live and are reused; default <c>&lt;output&gt;/class_images</c>.</summary>
    public string? ClassData { get; init; }
    public string? SamplePrompts { get; init; }

    // ---- dataset and captions ----
    public string? InstancePrompt { get; init; }
    public string? ClassPrompt { get; init; }
    /// <summary>Class images for prior preservation; null: 8 on the CPU (minutes, not hours, on 2 cores), 100 on a GPU (diffusers' default).</summary>
    public int? NumClassImages { get; init; }
    /// <summary>Sampling steps per class image; null: 12 on the CPU, 20 on a GPU.</summary>
    public int? ClassImageSteps { get; init; }
    /// <summary>Sampler for class images; null: DPM++ 2M Karras on the CPU (good images in few steps), DDIM on a GPU.</summary>
    public string? ClassImageSampler { get; init; }
    /// <summary>
    /// Where generated class images are kept for reuse by later runs, keyed by model hash, class prompt, size, sampler and
    /// steps; null: the class-images folder in sdlora's user cache; "none": no cache.
    /// </summary>
    public string? ClassImageCache { get; init; }
    public double PriorLossWeight { get; init; } = 1.0;
    /// <summary>Repeats for plain-folder datasets (kohya folders carry their own in the name).</summary>
    public int NumRepeats { get; init; } = 10;
    public string CaptionExtension { get; init; } = ".txt";
    public bool ShuffleCaption { get; init; }
    public int KeepTokens { get; init; }
    public double CaptionDropout { get; init; }

    // ---- resolution and buckets ----
    public Resolution Resolution { get; init; } = Resolution.Square(512);
    public bool EnableBucket { get; init; } = true;
    /// <summary>Smallest bucket side; null: 256, or the resolution's shorter side when that is smaller.</summary>
    public int? MinBucketReso { get; init; }
    /// <summary>Largest bucket side; null: 1024, or the resolution's longer side when that is larger.</summary>
    public int? MaxBucketReso { get; init; }
    public int BucketResoSteps { get; init; } = 64;
    public bool BucketNoUpscale { get; init; }
    public bool RandomCrop { get; init; }
    public bool FlipAug { get; init; }

    // ---- schedule ----
    public int TrainBatchSize { get; init; } = 1;
    public int MaxTrainEpochs { get; init; } = 10;
    /// <summary>When set, overrides <see cref="MaxTrainEpochs"/>.</summary>
    public int? MaxTrainSteps { get; init; }
    public int GradientAccumulationSteps { get; init; } = 1;
    public double MaxGradNorm { get; init; } = 1.0;
    public int Seed { get; init; } = 42;

    // ---- learning rates and optimizer ----
    public double LearningRate { get; init; } = 1e-4;
    /// <summary>UNet LR; falls back to <see cref="LearningRate"/>.</summary>
    public double? UnetLr { get; init; }
    public double? TextEncoderLr { get; init; } = 5e-5;
    /// <summary>AdamW, Lion or Prodigy.</summary>
    public string Optimizer { get; init; } = "AdamW";
    /// <summary>Extra optimizer settings as kohya's <c>key=value</c> strings (e.g. <c>d_coef=2</c> for Prodigy).</summary>
    public IReadOnlyList<string> OptimizerArgs { get; init; } = [];
    /// <summary>null: the optimizer's own default (AdamW 0.01, Lion 0, Prodigy 0).</summary>
    public double? WeightDecay { get; init; }
    public double? Beta1 { get; init; }
    public double? Beta2 { get; init; }
    public double? Epsilon { get; init; }
    /// <summary>constant, constant_with_warmup, cosine, cosine_with_restarts, linear, polynomial.</summary>
    public string LrScheduler { get; init; } = "constant";
    /// <summary>Warmup in steps; a value below 1 is a ratio of the total steps (kohya).</summary>
    public double LrWarmupSteps { get; init; }
    public int LrSchedulerNumCycles { get; init; } = 1;
    public double LrSchedulerPower { get; init; } = 1.0;

    // ---- network ----
    public int NetworkDim { get; init; } = 32;
    public double NetworkAlpha { get; init; } = 16;
    /// <summary>LoRA rank for 3x3 convs (LoCon); null leaves them untouched.</summary>
    public int? ConvDim { get; init; }
    public double? ConvAlpha { get; init; }
    public double? NetworkDropout { get; init; }
    public bool NetworkTrainUnetOnly { get; init; }
    public bool NetworkTrainTextEncoderOnly { get; init; }

    // ---- dreambooth (full fine-tune) ----
    /// <summary>Also train the text encoder (diffusers' <c>--train_text_encoder</c>).</summary>
    public bool TrainTextEncoder { get; init; }
    /// <summary>kohya: train the text encoder for the first N steps only; -1: not at all. Setting it (> 0) turns text-encoder training on.</summary>
    public int? StopTextEncoderTraining { get; init; }
    /// <summary><c>safetensors</c> (one LDM-layout file) or <c>diffusers</c> (a folder); null: the input model's layout.</summary>
    public string? SaveModelAs { get; init; }

    // ---- textual inversion, and a LoRA's pivotal tuning ----
    /// <summary>
    /// The new word (kohya's <c>token_string</c>); with several vectors the tokens are <c>sks</c>, <c>sks1</c>, <c>sks2</c>...
    /// Textual inversion trains only its vectors; a LoRA run with a token string trains them beside the LoRA (pivotal
    /// tuning) and writes them next to it.
    /// </summary>
    public string? TokenString { get; init; }
    /// <summary>Existing word whose embedding starts the new vectors (its tokens are repeated to fill them); null: random.</summary>
    public string? InitWord { get; init; }
    public int NumVectorsPerToken { get; init; } = 1;
    /// <summary>LoRA pivotal tuning: learning rate of the new word's vectors; null: <see cref="DefaultEmbeddingLr"/>.</summary>
    public double? EmbeddingLr { get; init; }
    /// <summary><c>captions</c> (the dataset's captions, with the token string in them), <c>object</c> or <c>style</c> (kohya's prompt templates).</summary>
    public string Template { get; init; } = "captions";

    // ---- diffusion objective ----
    public int ClipSkip { get; init; } = 1;
    public double NoiseOffset { get; init; }
    public double? MinSnrGamma { get; init; }
    public bool VParameterization { get; init; }

    // ---- compute and memory ----
    public string Device { get; init; } = "cpu";
    /// <summary>
    /// Dtype the frozen base model is held and computed in: auto (bf16 where this CPU computes it faster than fp32,
    /// else fp32; see <see cref="ComputeOptions.Resolve"/>), fp32, bf16 or fp16. <see cref="MixedPrecision"/> bf16/fp16 wins.
    /// </summary>
    public string Dtype { get; init; } = "auto";
    /// <summary>no, fp16 or bf16.</summary>
    public string MixedPrecision { get; init; } = "no";
    public string SavePrecision { get; init; } = "fp16";
    public bool GradientCheckpointing { get; init; }
    public bool CacheLatents { get; init; } = true;
    public bool CacheLatentsToDisk { get; init; }

    // ---- saving ----
    public int? SaveEveryNEpochs { get; init; }
    /// <summary>Keep only this many of the most recent epoch LoRA files (kohya's <c>save_last_n_epochs</c>); null keeps all.</summary>
    public int? SaveLastNEpochs { get; init; }
    public int? SampleEveryNEpochs { get; init; }
    public bool Resume { get; init; }
    public bool Overwrite { get; init; }

    public double EffectiveUnetLr => UnetLr ?? LearningRate;
    public double EffectiveTextEncoderLr => TextEncoderLr ?? LearningRate;
    /// <summary>The embedding learning rate textual inversion starts from (AUTOMATIC1111's default), also a LoRA's pivotal tuning's.</summary>
    public const double DefaultEmbeddingLr = 5e-3;
    public double EffectiveEmbeddingLr => EmbeddingLr ?? DefaultEmbeddingLr;
    /// <summary>LoRA with a token string: the new word's vectors train beside the LoRA.</summary>
    public bool PivotalTuning => Method == MethodLora && TokenString is not null;
    /// <summary>LoRA: the network has UNet modules.</summary>
    public bool NetworkTrainsUnet => !NetworkTrainTextEncoderOnly;
    /// <summary>LoRA: the network has text-encoder modules.</summary>
    public bool NetworkTrainsTextEncoder => !NetworkTrainUnetOnly && EffectiveTextEncoderLr > 0;
    /// <summary>DreamBooth: steps during which the text encoder trains (0: never; <see cref="int.MaxValue"/>: throughout).</summary>
    public int TextEncoderTrainingSteps =>
        StopTextEncoderTraining is { } stop ? Math.Max(0, stop) : TrainTextEncoder && EffectiveTextEncoderLr > 0 ? int.MaxValue : 0;
    /// <summary>The result's file name: <see cref="OutputName"/>, else <c>lora</c>, <c>model</c> or the token string.</summary>
    public string EffectiveOutputName => OutputName ?? Method switch
    {
        MethodDreamBooth => "model",
        MethodTextualInversion => TokenString ?? "embedding",
        _ => "lora",
    };
    /// <summary>The token strings of a textual inversion: <c>sks</c>, <c>sks1</c>, ..., one per vector (kohya's naming).</summary>
    public IReadOnlyList<string> TokenStrings => TokenString is null ? []
        : Enumerable.Range(0, NumVectorsPerToken).Select(i => i == 0 ? TokenString : TokenString + i.ToString(CultureInfo.InvariantCulture)).ToList();
    public bool WithPriorPreservation => ClassPrompt is not null || RegData is not null;
    /// <summary>kohya's default range 256..1024, widened to hold the resolution when that lies outside (a 64 px run has 64 px buckets).</summary>
    public int EffectiveMinBucketReso => MinBucketReso ?? Math.Min(256, Math.Max(BucketResoSteps, Math.Min(Resolution.Width, Resolution.Height) / BucketResoSteps * BucketResoSteps));
    public int EffectiveMaxBucketReso => MaxBucketReso ?? Math.Max(1024, (Math.Max(Resolution.Width, Resolution.Height) + BucketResoSteps - 1) / BucketResoSteps * BucketResoSteps);

    public const string MethodLora = "lora", MethodDreamBooth = "dreambooth", MethodTextualInversion = "textual-inversion";
    public static readonly string[] Methods = [MethodLora, MethodDreamBooth, MethodTextualInversion];
    public static readonly string[] Optimizers = ["AdamW", "Lion", "Prodigy", "Adafactor"];
    public static readonly string[] Templates = ["captions", "object", "style"];
    public static readonly string[] ModelFormats = ["safetensors", "diffusers"];

    /// <summary>
    /// The defaults of <paramref name="method"/>. Only the learning rates differ: LoRA 1e-4 (text encoder 5e-5, kohya's
    /// colab); DreamBooth 2e-6 for the UNet and the text encoder alike (kohya's <c>train_db.py</c> default, whose
    /// <c>learning_rate_te</c> follows the UNet's; diffusers' <c>train_dreambooth.py</c> uses 5e-6); textual inversion
    /// 5e-3 (AUTOMATIC1111's default embedding learning rate).
    /// </summary>
    public static TrainingConfig ForMethod(string method)
    {
        var m = NormalizeMethod(method);
        return m switch
        {
            MethodDreamBooth => new TrainingConfig { Method = m, LearningRate = 2e-6, TextEncoderLr = null },
            MethodTextualInversion => new TrainingConfig { Method = m, LearningRate = 5e-3 },
            _ => new TrainingConfig { Method = m },
        };
    }

    /// <summary>
    /// This config for another method: every setting still at this method's default takes the new method's default
    /// (so a LoRA learning rate left alone becomes DreamBooth's), settings changed on purpose are kept.
    /// </summary>
    public TrainingConfig WithMethod(string method)
    {
        var m = NormalizeMethod(method);
        if (m == Method) return this;
        var from = ForMethod(Method);
        var to = ForMethod(m);
        var result = this with { Method = m };
        foreach (var s in TrainingSettings.All)
        {
            if (s.Name == "method") continue;
            var mine = s.Get(this);
            if (Equals(mine, s.Get(from)) && !Equals(s.Get(from), s.Get(to))) result = s.With(result, s.Get(to));
        }
        return result;
    }

    /// <summary>The method's canonical spelling (any case; <c>textual_inversion</c> too); unknown names are kept for <see cref="Validate"/> to refuse.</summary>
    public static string NormalizeMethod(string method) => method.Trim().ToLowerInvariant().Replace('_', '-');
    public static readonly string[] Schedulers = ["constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"];

    /// <summary>Warmup steps for a run of <paramref name="totalSteps"/> (a ratio below 1 is scaled, as kohya does).</summary>
    public int WarmupSteps(int totalSteps) =>
        LrWarmupSteps < 1 && LrWarmupSteps > 0 ? (int)Math.Floor(LrWarmupSteps * totalSteps) : (int)LrWarmupSteps;

    /// <summary>Optimizer args parsed from <see cref="OptimizerArgs"/> (<c>key=value</c>).</summary>
    public IReadOnlyDictionary<string, string> ParsedOptimizerArgs()
    {
        var d = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var a in OptimizerArgs)
        {
            int eq = a.IndexOf('=');
            if (eq <= 0) throw new SdLoraException($"optimizer-args '{a}' is not key=value (e.g. weight_decay=0.01)") { Setting = "optimizer-args" };
            d[a[..eq].Trim()] = a[(eq + 1)..].Trim();
        }
        return d;
    }

    private bool OnCpu => Device.Trim().Equals("cpu", StringComparison.OrdinalIgnoreCase);

    /// <summary><see cref="NumClassImages"/>, or its device default.</summary>
    public int EffectiveNumClassImages => NumClassImages ?? (OnCpu ? 8 : 100);

    /// <summary><see cref="ClassImageSteps"/>, or its device default.</summary>
    public int EffectiveClassImageSteps => ClassImageSteps ?? (OnCpu ? 12 : 20);

    /// <summary><see cref="ClassImageSampler"/>, or its device default.</summary>
    public string EffectiveClassImageSampler => ClassImageSampler ?? (OnCpu ? "DPM++ 2M Karras" : "DDIM");

    /// <summary>The class-image cache folder, or null when turned off (<see cref="ClassImageCache"/> "none").</summary>
    public string? ClassImageCacheFolder => ClassImageCache switch
    {
        null => Path.Combine(UserCache.Folder, "class-images"),
        var v when v.Trim().Equals("none", StringComparison.OrdinalIgnoreCase) || v.Trim().Length == 0 => null,
        var v => v,
    };

    /// <summary>
    /// Where and in which precision the model computes: <see cref="MixedPrecision"/> bf16/fp16 when set, else
    /// <see cref="Dtype"/>; <c>auto</c> and CPU bf16 are decided by <paramref name="cpuProbe"/> (see <see cref="ComputeOptions.Resolve"/>).
    /// </summary>
    public ComputeOptions ResolveCompute(Func<CpuKernelProbeResult>? cpuProbe) =>
        ComputeOptions.Resolve(Device, MixedPrecision is "bf16" or "fp16" ? MixedPrecision : Dtype, cpuProbe);

    /// <summary>
    /// Checks every value and throws <see cref="SdLoraException"/> naming the first bad setting (by its
    /// <see cref="TrainingSettings"/> name, with <see cref="SdLoraException.Setting"/> set).
    /// </summary>
    /// <param name="requirePaths">false to check values only (a form being filled in, a model lent by a host).</param>
    public TrainingConfig Validate(bool requirePaths = true)
    {
        if (requirePaths)
        {
            if (string.IsNullOrWhiteSpace(Model)) Fail("model", "model is required: a .safetensors/.ckpt checkpoint or a diffusers folder");
            if (string.IsNullOrWhiteSpace(Data)) Fail("data", "data is required: a folder of images, a kohya dataset root (10_sks dog sub-folders) or a .zip");
            if (string.IsNullOrWhiteSpace(Output)) Fail("output", "output is required: the folder the LoRA, loss.csv and state/ are written to");
        }
        Positive("learning-rate", LearningRate);
        if (UnetLr is { } u) NonNegative("unet-lr", u);
        if (TextEncoderLr is { } t) NonNegative("text-encoder-lr", t);
        AtLeast("train-batch-size", TrainBatchSize, 1);
        AtLeast("max-train-epochs", MaxTrainEpochs, 1);
        if (MaxTrainSteps is { } s) AtLeast("max-train-steps", s, 1);
        AtLeast("gradient-accumulation-steps", GradientAccumulationSteps, 1);
        NonNegative("max-grad-norm", MaxGradNorm);
        AtLeast("num-repeats", NumRepeats, 1);
        if (NumClassImages is { } nc) AtLeast("num-class-images", nc, 0);
        if (ClassImageSteps is { } cs) AtLeast("class-image-steps", cs, 1);
        if (ClassImageSampler is { } sampler)
        {
            try { Sampling.SamplerCatalog.Get(sampler); }
            catch (SdLoraException bad) { Fail("class-image-sampler", $"class-image-sampler: {bad.Message}"); }
        }
        NonNegative("prior-loss-weight", PriorLossWeight);
        AtLeast("keep-tokens", KeepTokens, 0);
        if (CaptionDropout is < 0 or > 1 || double.IsNaN(CaptionDropout))
            Fail("caption-dropout", $"caption-dropout must be between 0 and 1 (got {Fmt(CaptionDropout)})");
        AtLeast("network-dim", NetworkDim, 1);
        Positive("network-alpha", NetworkAlpha);
        if (ConvDim is { } cd) AtLeast("conv-dim", cd, 1);
        if (ConvAlpha is { } ca) Positive("conv-alpha", ca);
        if (NetworkDropout is { } nd && (nd < 0 || nd >= 1)) Fail("network-dropout", $"network-dropout must be in [0, 1) (got {Fmt(nd)})");
        if (NetworkTrainUnetOnly && NetworkTrainTextEncoderOnly)
            Fail("network-train-text-encoder-only", "network-train-unet-only and network-train-text-encoder-only exclude each other: set at most one");
        if (ClipSkip is < 1 or > 12) Fail("clip-skip", $"clip-skip must be between 1 and 12 (got {ClipSkip}); 2 is the usual choice for anime models");
        NonNegative("noise-offset", NoiseOffset);
        if (MinSnrGamma is { } g) Positive("min-snr-gamma", g);
        if (Resolution.Width < 64 || Resolution.Height < 64 || Resolution.Width % 8 != 0 || Resolution.Height % 8 != 0)
            Fail("resolution", $"resolution must be at least 64 and a multiple of 8 (got {Resolution})");
        AtLeast("bucket-reso-steps", BucketResoSteps, 8);
        if (BucketResoSteps % 8 != 0) Fail("bucket-reso-steps", $"bucket-reso-steps must be a multiple of 8 (got {BucketResoSteps}); 64 is usual");
        if (MinBucketReso is { } minReso) AtLeast("min-bucket-reso", minReso, BucketResoSteps);
        if (EffectiveMaxBucketReso < EffectiveMinBucketReso)
            Fail("max-bucket-reso", $"max-bucket-reso ({EffectiveMaxBucketReso}) must be >= min-bucket-reso ({EffectiveMinBucketReso})");
        if (EnableBucket && (Math.Max(Resolution.Width, Resolution.Height) > EffectiveMaxBucketReso || Math.Min(Resolution.Width, Resolution.Height) < EffectiveMinBucketReso))
            Fail("resolution", $"resolution {Resolution} lies outside the bucket range {EffectiveMinBucketReso}..{EffectiveMaxBucketReso}: " +
                 "widen min-bucket-reso/max-bucket-reso (or leave them unset to follow the resolution)");
        if (!Optimizers.Contains(Optimizer, StringComparer.OrdinalIgnoreCase))
            Fail("optimizer", Optimizer.Contains("8bit", StringComparison.OrdinalIgnoreCase)
                ? $"optimizer {Optimizer} needs bitsandbytes, which has no .NET build: use AdamW (same update, full-precision state)"
                : $"optimizer '{Optimizer}' is not supported: use {string.Join(", ", Optimizers)}");
        if (!Schedulers.Contains(LrScheduler)) Fail("lr-scheduler", $"lr-scheduler '{LrScheduler}' is not supported: use {string.Join(", ", Schedulers)}");
        NonNegative("lr-warmup-steps", LrWarmupSteps);
        if (LrWarmupSteps >= 1 && LrWarmupSteps != Math.Floor(LrWarmupSteps))
            Fail("lr-warmup-steps", $"lr-warmup-steps must be a whole number of steps or a ratio below 1 (got {Fmt(LrWarmupSteps)})");
        AtLeast("lr-scheduler-num-cycles", LrSchedulerNumCycles, 1);
        Positive("lr-scheduler-power", LrSchedulerPower);
        if (WeightDecay is { } wd) NonNegative("weight-decay", wd);
        if (Beta1 is { } b1 && b1 is < 0 or >= 1) Fail("beta1", $"beta1 must be in [0, 1) (got {Fmt(b1)})");
        if (Beta2 is { } b2 && b2 is < 0 or >= 1) Fail("beta2", $"beta2 must be in [0, 1) (got {Fmt(b2)})");
        if (Epsilon is { } e) Positive("epsilon", e);
        ParsedOptimizerArgs();
        if (MixedPrecision is not ("no" or "fp16" or "bf16")) Fail("mixed-precision", $"mixed-precision '{MixedPrecision}' is not supported: use no, fp16 or bf16");
        if (SavePrecision is not ("fp32" or "fp16" or "bf16" or "float")) Fail("save-precision", $"save-precision '{SavePrecision}' is not supported: use fp32, fp16 or bf16");
        if (!ComputeOptions.IsAuto(Dtype))
        {
            try { ComputeOptions.ParseDType(Dtype); }
            catch (SdLoraException) { Fail("dtype", $"dtype '{Dtype}' is not supported: use auto, fp32, bf16 or fp16"); }
        }
        if (Device.Trim().ToLowerInvariant() is not ("cpu" or "cuda") && !Device.StartsWith("cuda:", StringComparison.OrdinalIgnoreCase))
            Fail("device", $"device '{Device}' is not known: use cpu, cuda or cuda:N");
        if (SaveEveryNEpochs is { } se) AtLeast("save-every-n-epochs", se, 1);
        if (SaveLastNEpochs is { } sl) AtLeast("save-last-n-epochs", sl, 1);
        if (SampleEveryNEpochs is { } sa) AtLeast("sample-every-n-epochs", sa, 1);
        if (RandomCrop && CacheLatents)
            Fail("random-crop", "random-crop gives a new crop every epoch, which cached latents can't follow: set cache-latents false, or drop random-crop");
        if (Resume && Overwrite) Fail("overwrite", "resume and overwrite exclude each other: resume continues the run in the output folder, overwrite discards it");
        if (OutputName is not null && (string.IsNullOrWhiteSpace(OutputName) || OutputName.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0 || OutputName.Contains('/')))
            Fail("output-name", $"output-name '{OutputName}' is not a valid file name");
        if (!CaptionExtension.StartsWith('.')) Fail("caption-extension", $"caption-extension must start with a dot (got '{CaptionExtension}'), e.g. .txt");
        ValidateMethod();
        return this;
    }

    // What one method needs and what makes no sense for it.
    private void ValidateMethod()
    {
        if (!Methods.Contains(Method)) Fail("method", $"method '{Method}' is not known: use {string.Join(", ", Methods)}");
        if (SaveModelAs is { } format && !ModelFormats.Contains(format))
            Fail("save-model-as", format is "ckpt" or "pt"
                ? $"save-model-as {format} is not written by sdlora (pickles can carry code): use safetensors, which A1111, ComfyUI and kohya load"
                : $"save-model-as '{format}' is not supported: use {string.Join(" or ", ModelFormats)}");
        if (Method != MethodDreamBooth && SaveModelAs == "diffusers")
            Fail("save-model-as", $"save-model-as diffusers is for method dreambooth (a whole model); a {(Method == MethodLora ? "LoRA" : "textual-inversion embedding")} is one safetensors file");
        if (Method == MethodDreamBooth)
        {
            if (StopTextEncoderTraining is < -1) Fail("stop-text-encoder-training", $"stop-text-encoder-training must be -1 (no text-encoder training) or a step count (got {StopTextEncoderTraining})");
            if (StopTextEncoderTraining == -1 && TrainTextEncoder)
                Fail("stop-text-encoder-training", "stop-text-encoder-training -1 turns text-encoder training off, which contradicts train-text-encoder: keep one");
        }
        if (!Templates.Contains(Template)) Fail("template", $"template '{Template}' is not known: use {string.Join(", ", Templates)}");
        if (EmbeddingLr is { } elr) Positive("embedding-lr", elr);
        if (Method == MethodDreamBooth && TokenString is not null)
            Fail("token-string", "token-string is for textual-inversion and for a LoRA's pivotal tuning; dreambooth trains the text encoder itself (train-text-encoder): drop token-string");
        if (Method == MethodLora && TokenString is null && (EmbeddingLr is not null || InitWord is not null))
            Fail(EmbeddingLr is not null ? "embedding-lr" : "init-word", "embedding-lr and init-word are for a new word's vectors: set token-string too (pivotal tuning), or drop them");
        if (Method == MethodLora && Template != "captions")
            Fail("template", $"template {Template} is for textual-inversion; a LoRA learns from the captions (or instance-prompt) as given");
        if (Method == MethodTextualInversion && string.IsNullOrWhiteSpace(TokenString))
            Fail("token-string", "textual-inversion needs token-string: the new word to teach, e.g. --token-string sks (write it in the captions, or use template object/style)");
        if (Method == MethodTextualInversion && EmbeddingLr is not null)
            Fail("embedding-lr", "embedding-lr is for a LoRA's pivotal tuning; textual-inversion trains the embedding at learning-rate");
        if (TokenString is null) return;
        if (string.IsNullOrWhiteSpace(TokenString)) Fail("token-string", "token-string is empty: give the new word to teach, e.g. sks, or leave it unset");
        if (!TokenString!.All(ch => char.IsAsciiLetterOrDigit(ch) || ch is '_' or '-') || char.IsAsciiDigit(TokenString![^1]))
            Fail("token-string", $"token-string '{TokenString}' must be one word of letters, digits, '_' or '-', not ending in a digit (sdlora adds {TokenString}1, {TokenString}2... for extra vectors)");
        if (NumVectorsPerToken is < 1 or > 75) Fail("num-vectors-per-token", $"num-vectors-per-token must be between 1 and 75 (got {NumVectorsPerToken})");
        if (InitWord is { } w && string.IsNullOrWhiteSpace(w)) Fail("init-word", "init-word is empty: give an existing word close to the subject (e.g. dog), or leave it unset for a random start");
    }

    internal static string Fmt(double v) => v.ToString("R", CultureInfo.InvariantCulture);
    private static void Fail(string setting, string message) => throw new SdLoraException(message) { Setting = setting };
    private static void Positive(string setting, double v)
    {
        if (!(v > 0) || double.IsInfinity(v)) Fail(setting, $"{setting} must be > 0 (got {Fmt(v)})");
    }
    private static void NonNegative(string setting, double v)
    {
        if (!(v >= 0) || double.IsInfinity(v)) Fail(setting, $"{setting} must be >= 0 (got {Fmt(v)})");
    }
    private static void AtLeast(string setting, int v, int min)
    {
        if (v < min) Fail(setting, $"{setting} must be >= {min} (got {v})");
    }
}
