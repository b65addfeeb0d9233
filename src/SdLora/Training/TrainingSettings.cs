using System.Collections;
using System.Globalization;
using System.Reflection;

namespace SdLora.Training;

/// <summary>
/// One <see cref="TrainingConfig"/> setting, as every front end shows it: its name (kebab-case: the TOML key, the
/// <c>run.json</c> key and the command-line flag), kohya's snake_case name, the value type, the default, a one-line
/// description, the allowed values (when it is a choice) and whether it is an advanced setting.
/// </summary>
public sealed class TrainingSetting
{
    private readonly PropertyInfo _property;

    internal TrainingSetting(PropertyInfo property, string name, string kohyaName, string group, string description,
        string valueName, IReadOnlyList<string> allowed, bool advanced, IReadOnlyList<string> aliases, string? defaultText)
    {
        _property = property;
        Name = name; KohyaName = kohyaName; Group = group; Description = description; ValueName = valueName;
        AllowedValues = allowed; Advanced = advanced; Aliases = aliases;
        Default = property.GetValue(new TrainingConfig());
        DefaultText = defaultText ?? Format(Default);
    }

    /// <summary>kebab-case name: <c>learning-rate</c>.</summary>
    public string Name { get; }
    /// <summary>kohya sd-scripts' name: <c>learning_rate</c>, <c>pretrained_model_name_or_path</c>.</summary>
    public string KohyaName { get; }
    /// <summary>Other accepted spellings (kebab or snake case), e.g. diffusers' <c>instance_data_dir</c>.</summary>
    public IReadOnlyList<string> Aliases { get; }
    /// <summary>Section it belongs to: paths, dataset, resolution, schedule, optimizer, network, objective, compute, saving.</summary>
    public string Group { get; }
    public string Description { get; }
    /// <summary>Placeholder for the value in help text: <c>PATH</c>, <c>N</c>, <c>RATE</c>, <c>W,H</c>...</summary>
    public string ValueName { get; }
    /// <summary>The choices, when the setting is one of a fixed set (empty otherwise).</summary>
    public IReadOnlyList<string> AllowedValues { get; }
    /// <summary>Settings most runs leave alone (a form can fold them away).</summary>
    public bool Advanced { get; }
    /// <summary>The property's type (<c>int</c>, <c>double?</c>, <c>string</c>, <c>bool</c>, <see cref="Resolution"/>, a string list).</summary>
    public Type Type => _property.PropertyType;
    /// <summary>The value type without <c>Nullable&lt;&gt;</c>.</summary>
    public Type ValueType => Nullable.GetUnderlyingType(Type) ?? Type;
    public bool IsSwitch => ValueType == typeof(bool);
    public bool IsList => ValueType == typeof(IReadOnlyList<string>);
    /// <summary>True when "not set" (null) is a valid value.</summary>
    public bool IsOptional => Nullable.GetUnderlyingType(Type) is not null || !Type.IsValueType && ValueType != typeof(IReadOnlyList<string>);
    public object? Default { get; }
    /// <summary>The default as the user would type it; empty when there is none.</summary>
    public string DefaultText { get; }
    /// <summary>Every name this setting answers to: name, kohya name, aliases.</summary>
    public IEnumerable<string> AllNames => new[] { Name, KohyaName }.Concat(Aliases).Distinct(StringComparer.Ordinal);

    public object? Get(TrainingConfig config) => _property.GetValue(config);

    /// <summary>
    /// A copy of <paramref name="config"/> with this setting changed (no validation: see <see cref="TrainingConfig.Validate"/>).
    /// Changing the method also moves the settings left at the old method's defaults to the new one's (<see cref="TrainingConfig.WithMethod"/>).
    /// </summary>
    public TrainingConfig With(TrainingConfig config, object? value)
    {
        if (Name == "method" && value is string method) return config.WithMethod(method);
        var copy = config with { };
        _property.SetValue(copy, value);
        return copy;
    }

    /// <summary>
    /// Converts a value typed by a user (string) or read from TOML (long, double, bool, string, array) to this setting's type.
    /// Throws <see cref="SdLoraException"/> naming the setting when it does not fit; <c>none</c> or empty text clears an optional setting.
    /// </summary>
    public object? Convert(object? value, string? source = null)
    {
        try { return ConvertCore(value); }
        catch (Exception e) when (e is FormatException or OverflowException or InvalidCastException)
        {
            string want = ValueType == typeof(int) ? "a whole number" : ValueType == typeof(double) ? "a number"
                : ValueType == typeof(bool) ? "true or false" : ValueType == typeof(Resolution) ? "a size like 512 or 512,768"
                : ValueType == typeof(string) ? "text" : "a list of text values";
            throw new SdLoraException($"{(source is null ? "" : source + ": ")}{Name} must be {want} (got '{System.Convert.ToString(value, CultureInfo.InvariantCulture)}')")
            { Setting = Name };
        }
    }

    private object? ConvertCore(object? value)
    {
        var t = ValueType;
        if (value is null || value is string { Length: 0 } || value is string s0 && s0.Trim().Equals("none", StringComparison.OrdinalIgnoreCase) && t != typeof(string))
            return IsOptional ? null : throw new FormatException();
        if (t == typeof(string)) return value is string s ? s : System.Convert.ToString(value, CultureInfo.InvariantCulture);
        if (t == typeof(int))
        {
            if (value is string si) return int.Parse(si.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture);
            if (value is double d && d != Math.Floor(d)) throw new FormatException();
            return System.Convert.ToInt32(value, CultureInfo.InvariantCulture);
        }
        if (t == typeof(double))
            return value is string sd ? double.Parse(sd.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture) : System.Convert.ToDouble(value, CultureInfo.InvariantCulture);
        if (t == typeof(bool))
            return value switch
            {
                bool b => b,
                string sb when sb.Trim().ToLowerInvariant() is "true" or "1" or "yes" or "on" => true,
                string sb when sb.Trim().ToLowerInvariant() is "false" or "0" or "no" or "off" => false,
                _ => throw new FormatException(),
            };
        if (t == typeof(Resolution))
            return value switch
            {
                Resolution r => r,
                string sr => Resolution.Parse(sr),
                long or int => Resolution.Square(System.Convert.ToInt32(value, CultureInfo.InvariantCulture)),
                IList list when list.Count is 1 or 2 => new Resolution(System.Convert.ToInt32(list[0], CultureInfo.InvariantCulture),
                    System.Convert.ToInt32(list[^1], CultureInfo.InvariantCulture)),
                _ => throw new FormatException(),
            };
        if (t == typeof(IReadOnlyList<string>))
            return value switch
            {
                string sl => sl.Split(' ', StringSplitOptions.RemoveEmptyEntries).ToList(),
                IEnumerable e => e.Cast<object?>().Select(o => System.Convert.ToString(o, CultureInfo.InvariantCulture) ?? "").ToList(),
                _ => throw new FormatException(),
            };
        throw new InvalidOperationException($"setting {Name}: no converter for {t.Name}");
    }

    /// <summary>A value as the user would type it (<c>true</c>, <c>0.0001</c>, <c>512,512</c>).</summary>
    public static string Format(object? value) => value switch
    {
        null => "",
        bool b => b ? "true" : "false",
        double d => d.ToString("G", CultureInfo.InvariantCulture),
        IEnumerable e and not string => string.Join(" ", e.Cast<object>()),
        _ => System.Convert.ToString(value, CultureInfo.InvariantCulture) ?? "",
    };

    public override string ToString() => Name;
}

/// <summary>
/// A kohya sd-scripts option that has no setting here because sdlora does the thing on its own (or it does not apply):
/// accepted so pasted kohya commands and TOML files work, reported with a one-line note, or refused when the value
/// asks for something sdlora cannot do.
/// </summary>
/// <param name="Apply">For options that are another spelling of a setting's value (kohya's <c>use_object_template</c> is
/// <c>template object</c>): how the value changes the config.</param>
public sealed record KohyaOnlySetting(string Name, string KohyaName, bool IsSwitch, string Description, Func<object?, string?> Check,
    Func<TrainingConfig, object?, TrainingConfig>? Apply = null)
{
    /// <summary>The note to show for <paramref name="value"/> (null: nothing worth saying); throws for values sdlora cannot honour.</summary>
    public string? Note(object? value) => Check(value);
}

/// <summary>
/// The table of every <see cref="TrainingConfig"/> setting: the one source the TOML loader, the command line (its
/// options, help and validation) and a web form are built from. <see cref="Find"/> resolves any spelling.
/// </summary>
public static class TrainingSettings
{
    private static readonly Lazy<IReadOnlyList<TrainingSetting>> Table = new(Build);
    private static readonly Lazy<Dictionary<string, TrainingSetting>> ByName = new(() =>
    {
        var d = new Dictionary<string, TrainingSetting>(StringComparer.Ordinal);
        foreach (var s in All)
            foreach (var n in s.AllNames)
                if (!d.TryAdd(Normalize(n), s) && d[Normalize(n)] != s) throw new InvalidOperationException($"setting name {n} is used twice");
        return d;
    });

    /// <summary>Every setting, in the order help and forms list them (by group, main settings first within a group).</summary>
    public static IReadOnlyList<TrainingSetting> All => Table.Value;

    /// <summary>The setting called <paramref name="name"/> in any spelling (<c>--learning-rate</c>, <c>learning_rate</c>, an alias), or null.</summary>
    public static TrainingSetting? Find(string name) => ByName.Value.GetValueOrDefault(Normalize(name));

    /// <summary>The setting called <paramref name="name"/>; throws for names that are not settings.</summary>
    public static TrainingSetting Get(string name) => Find(name) ?? throw new ArgumentException($"no training setting is called {name}", nameof(name));

    /// <summary>kohya options accepted for compatibility that are not settings of their own.</summary>
    public static IReadOnlyList<KohyaOnlySetting> KohyaOnly { get; } =
    [
        Switch("xformers", "xformers attention (CUDA only)", "xformers: not needed (sdlora uses torch's scaled-dot-product attention); ignored"),
        Switch("sdpa", "torch scaled-dot-product attention", null),
        Switch("mem-eff-attn", "memory-efficient attention", "mem-eff-attn: not needed (sdlora uses torch's scaled-dot-product attention); ignored"),
        Switch("save-state", "save resumable state", "save-state: sdlora always keeps resumable state in <output>/state; nothing to add"),
        Switch("lowram", "low-RAM loading", "lowram: ignored (checkpoints are memory-mapped and loaded one tensor at a time)"),
        Switch("with-prior-preservation", "DreamBooth prior preservation", "with-prior-preservation: implied by class-prompt or reg-data; ignored"),
        Switch("persistent-data-loader-workers", "keep data-loader workers alive", null),
        Switch("console-log-simple", "plain console log", null),
        Switch("use-object-template", "textual inversion: kohya's object prompt templates", null) with
            { Apply = (c, v) => IsTrue(v) ? c with { Template = "object" } : c },
        Switch("use-style-template", "textual inversion: kohya's style prompt templates", null) with
            { Apply = (c, v) => IsTrue(v) ? c with { Template = "style" } : c },
        Value("network-module", "LoRA network implementation", v => IsText(v, "networks.lora") ? null
            : throw new SdLoraException($"network-module '{v}' is not supported: sdlora trains kohya's networks.lora (LoRA; LoCon with conv-dim)") { Setting = "network-module" }),
        Value("max-data-loader-n-workers", "data-loader worker processes", null),
        Value("logging-dir", "TensorBoard folder", _ => "logging-dir: ignored (TensorBoard logs go to <output>/logs)"),
        Value("log-prefix", "TensorBoard run prefix", null),
        Value("log-with", "logger", _ => "log-with: ignored (sdlora writes loss.csv, loss.png and TensorBoard logs in <output>)"),
        Value("caption-tag-dropout-rate", "caption tag dropout", _ => "caption-tag-dropout-rate: not supported; ignored (caption-dropout drops whole captions)"),
    ];

    /// <summary>The kohya-only option called <paramref name="name"/> (any spelling), or null.</summary>
    public static KohyaOnlySetting? FindKohyaOnly(string name)
    {
        var n = Normalize(name);
        return KohyaOnly.FirstOrDefault(k => k.Name == n);
    }

    /// <summary><c>--Learning_Rate</c> -> <c>learning-rate</c>.</summary>
    public static string Normalize(string name) => name.Trim().TrimStart('-').Replace('_', '-').ToLowerInvariant();

    private static KohyaOnlySetting Switch(string name, string description, string? note) =>
        new(name, name.Replace('-', '_'), true, description, _ => note);

    private static KohyaOnlySetting Value(string name, string description, Func<object?, string?>? check) =>
        new(name, name.Replace('-', '_'), false, description, check ?? (_ => null));

    private static bool IsTrue(object? v) => v is true || v is string s && s.Trim().ToLowerInvariant() is "true" or "1" or "yes" or "on";

    private static bool IsText(object? v, string expected) =>
        string.Equals(System.Convert.ToString(v, CultureInfo.InvariantCulture)?.Trim(), expected, StringComparison.OrdinalIgnoreCase);

    private static IReadOnlyList<TrainingSetting> Build()
    {
        var list = new List<TrainingSetting>();
        void Add(string property, string group, string description, string valueName = "", string? kohya = null,
            string[]? allowed = null, bool advanced = false, string[]? aliases = null, string? defaultText = null)
        {
            var p = typeof(TrainingConfig).GetProperty(property) ?? throw new InvalidOperationException($"TrainingConfig has no property {property}");
            var name = KebabCase(property);
            var type = Nullable.GetUnderlyingType(p.PropertyType) ?? p.PropertyType;
            if (valueName.Length == 0)
                valueName = type == typeof(bool) ? "true|false" : type == typeof(int) ? "N" : type == typeof(double) ? "X" : type == typeof(Resolution) ? "W[,H]"
                    : type == typeof(IReadOnlyList<string>) ? "K=V..." : allowed is not null ? string.Join("|", allowed) : "TEXT";
            list.Add(new TrainingSetting(p, name, kohya ?? name.Replace('-', '_'), group, description, valueName, allowed ?? [], advanced,
                aliases ?? [], defaultText));
        }

        const string MethodGroup = "method", DreamBooth = "dreambooth", Inversion = "textual-inversion";
        const string Paths = "paths", Dataset = "dataset", Reso = "resolution", Schedule = "schedule", Optim = "optimizer",
            Network = "network", Objective = "objective", Compute = "compute", Saving = "saving";

        Add(nameof(TrainingConfig.Method), MethodGroup, "what to train: a LoRA (small adapter file), the whole model (dreambooth) or new word embeddings (textual-inversion)",
            allowed: [.. TrainingConfig.Methods]);
        Add(nameof(TrainingConfig.Model), Paths, "base model: a .safetensors/.ckpt checkpoint or a diffusers folder", "PATH", kohya: "pretrained_model_name_or_path");
        Add(nameof(TrainingConfig.Data), Paths, "training images: a folder, a kohya root (10_sks dog sub-folders) or a .zip of either", "PATH",
            kohya: "train_data_dir", aliases: ["instance_data_dir"]);
        Add(nameof(TrainingConfig.Output), Paths, "folder for the LoRA, loss.csv/loss.png, samples and state/ (created if missing)", "DIR",
            kohya: "output_dir", aliases: ["out"]);
        Add(nameof(TrainingConfig.OutputName), Paths, "file name of the result: NAME.safetensors, epochs as NAME-000001.safetensors", "NAME",
            defaultText: "lora; dreambooth: model; textual-inversion: the token string");
        Add(nameof(TrainingConfig.SamplePrompts), Paths, "kohya sample-prompt file (one prompt per line; --n, --w, --h, --d, --l, --s)", "FILE");
        Add(nameof(TrainingConfig.RegData), Paths, "ready-made class images: a kohya root with <repeats>_<class> sub-folders", "PATH",
            kohya: "reg_data_dir", advanced: true);
        Add(nameof(TrainingConfig.ClassData), Paths, "where generated class images are kept and reused", "DIR", kohya: "class_data_dir",
            advanced: true, defaultText: "<output>/class_images");
        Add(nameof(TrainingConfig.ClassImageCache), Paths, "where generated class images are kept for later runs (keyed by model, prompt, size, sampler, steps); none turns it off",
            "DIR", advanced: true, defaultText: "class-images in sdlora's user cache folder");

        Add(nameof(TrainingConfig.InstancePrompt), Dataset, "caption of every image in a plain folder (same-name .txt files override it)", "TEXT");
        Add(nameof(TrainingConfig.ClassPrompt), Dataset, "turns on prior preservation: class images are generated from this prompt", "TEXT");
        Add(nameof(TrainingConfig.NumClassImages), Dataset, "class images wanted for prior preservation (missing ones are generated)",
            defaultText: "8 on the CPU, 100 on a GPU");
        Add(nameof(TrainingConfig.ClassImageSteps), Dataset, "sampling steps per generated class image", advanced: true,
            defaultText: "12 on the CPU, 20 on a GPU");
        Add(nameof(TrainingConfig.ClassImageSampler), Dataset, "sampler for generated class images", "NAME", advanced: true,
            defaultText: "DPM++ 2M Karras on the CPU, DDIM on a GPU");
        Add(nameof(TrainingConfig.PriorLossWeight), Dataset, "weight of the class images' loss");
        Add(nameof(TrainingConfig.NumRepeats), Dataset, "repeats per epoch of a plain folder's images (kohya folders carry theirs in the name)",
            aliases: ["dataset_repeats"]);
        Add(nameof(TrainingConfig.CaptionExtension), Dataset, "extension of caption files beside the images", ".EXT", advanced: true);
        Add(nameof(TrainingConfig.ShuffleCaption), Dataset, "shuffle the comma-separated tags of each caption every time", advanced: true);
        Add(nameof(TrainingConfig.KeepTokens), Dataset, "leading tags that shuffle-caption keeps in place", advanced: true);
        Add(nameof(TrainingConfig.CaptionDropout), Dataset, "chance of training an image with an empty caption (0..1)", kohya: "caption_dropout_rate", advanced: true);

        Add(nameof(TrainingConfig.Resolution), Reso, "training size: 512 or 512,768 (width,height)");
        Add(nameof(TrainingConfig.EnableBucket), Reso, "sort images into aspect-ratio buckets (else everything is cropped to the resolution)");
        Add(nameof(TrainingConfig.MinBucketReso), Reso, "smallest bucket side", advanced: true, defaultText: "256, or the resolution's shorter side when smaller");
        Add(nameof(TrainingConfig.MaxBucketReso), Reso, "largest bucket side", advanced: true, defaultText: "1024, or the resolution's longer side when larger");
        Add(nameof(TrainingConfig.BucketResoSteps), Reso, "bucket sides are multiples of this (multiple of 8)", advanced: true);
        Add(nameof(TrainingConfig.BucketNoUpscale), Reso, "never enlarge small images: buckets follow the images' own sizes", advanced: true);
        Add(nameof(TrainingConfig.RandomCrop), Reso, "random instead of centre crops (needs cache-latents false)", advanced: true);
        Add(nameof(TrainingConfig.FlipAug), Reso, "also train on mirrored images (not for asymmetric subjects)", advanced: true);

        Add(nameof(TrainingConfig.MaxTrainSteps), Schedule, "run length in optimizer steps (overrides max-train-epochs)");
        Add(nameof(TrainingConfig.MaxTrainEpochs), Schedule, "run length in epochs (one epoch = every image x its repeats)", aliases: ["max_train_epoch"]);
        Add(nameof(TrainingConfig.TrainBatchSize), Schedule, "images per micro-batch");
        Add(nameof(TrainingConfig.GradientAccumulationSteps), Schedule, "micro-batches per optimizer step", advanced: true);
        Add(nameof(TrainingConfig.MaxGradNorm), Schedule, "clip the gradient norm to this (0 = no clipping)", advanced: true);
        Add(nameof(TrainingConfig.Seed), Schedule, "seed of the batch order, noise, timesteps, LoRA init and dropout");

        Add(nameof(TrainingConfig.LearningRate), Optim, "learning rate (UNet, and text encoder unless text-encoder-lr is set)", "LR",
            defaultText: "0.0001; dreambooth: 2e-06; textual-inversion: 0.005");
        Add(nameof(TrainingConfig.UnetLr), Optim, "UNet learning rate", "LR", advanced: true, defaultText: "learning-rate");
        Add(nameof(TrainingConfig.TextEncoderLr), Optim, "text-encoder learning rate (0 = UNet only; none = learning-rate)", "LR",
            aliases: ["learning_rate_te"], defaultText: "5e-05; dreambooth: learning-rate");
        Add(nameof(TrainingConfig.Optimizer), Optim, "optimizer", kohya: "optimizer_type", allowed: [.. TrainingConfig.Optimizers]);
        Add(nameof(TrainingConfig.OptimizerArgs), Optim, "extra optimizer settings as key=value (e.g. d_coef=2 for Prodigy)", advanced: true);
        Add(nameof(TrainingConfig.WeightDecay), Optim, "weight decay", advanced: true, aliases: ["adam_weight_decay"],
            defaultText: "the optimizer's own (AdamW 0.01, Lion, Prodigy and Adafactor 0)");
        Add(nameof(TrainingConfig.Beta1), Optim, "first moment decay", kohya: "adam_beta1", advanced: true, defaultText: "the optimizer's own");
        Add(nameof(TrainingConfig.Beta2), Optim, "second moment decay", kohya: "adam_beta2", advanced: true, defaultText: "the optimizer's own");
        Add(nameof(TrainingConfig.Epsilon), Optim, "optimizer epsilon", kohya: "adam_epsilon", advanced: true, defaultText: "the optimizer's own");
        Add(nameof(TrainingConfig.LrScheduler), Optim, "learning-rate schedule", allowed: [.. TrainingConfig.Schedulers]);
        Add(nameof(TrainingConfig.LrWarmupSteps), Optim, "warmup steps (a value below 1 is a ratio of the run)", advanced: true, aliases: ["lr_warmup"]);
        Add(nameof(TrainingConfig.LrSchedulerNumCycles), Optim, "restarts of cosine_with_restarts", advanced: true);
        Add(nameof(TrainingConfig.LrSchedulerPower), Optim, "power of the polynomial schedule", advanced: true);

        Add(nameof(TrainingConfig.NetworkDim), Network, "LoRA rank");
        Add(nameof(TrainingConfig.NetworkAlpha), Network, "LoRA alpha (the update is scaled by alpha / rank)");
        Add(nameof(TrainingConfig.ConvDim), Network, "rank for 3x3 convolutions (LoCon); none leaves them out", advanced: true);
        Add(nameof(TrainingConfig.ConvAlpha), Network, "alpha for 3x3 convolutions", advanced: true, defaultText: "network-alpha");
        Add(nameof(TrainingConfig.NetworkDropout), Network, "dropout on the LoRA input while training (0..1)", advanced: true);
        Add(nameof(TrainingConfig.NetworkTrainUnetOnly), Network, "train the UNet LoRA only", advanced: true);
        Add(nameof(TrainingConfig.NetworkTrainTextEncoderOnly), Network, "train the text-encoder LoRA only", advanced: true);

        Add(nameof(TrainingConfig.TrainTextEncoder), DreamBooth, "dreambooth: train the text encoder too");
        Add(nameof(TrainingConfig.StopTextEncoderTraining), DreamBooth, "dreambooth: train the text encoder for the first N steps only (-1: not at all)",
            advanced: true);
        Add(nameof(TrainingConfig.SaveModelAs), DreamBooth, "dreambooth: write the model as one safetensors file (LDM keys) or a diffusers folder",
            allowed: [.. TrainingConfig.ModelFormats], defaultText: "the input model's layout");

        Add(nameof(TrainingConfig.TokenString), Inversion, "the new word (sks; extra vectors add sks1, sks2...): textual-inversion trains its vectors; " +
            "lora trains them beside the LoRA (pivotal tuning) and writes them to NAME.embeddings/WORD.safetensors", "WORD");
        Add(nameof(TrainingConfig.InitWord), Inversion, "existing word the new vectors start from (e.g. dog)", "WORD",
            defaultText: "random");
        Add(nameof(TrainingConfig.NumVectorsPerToken), Inversion, "vectors (tokens) the new word takes in a prompt");
        Add(nameof(TrainingConfig.EmbeddingLr), Inversion, "lora with token-string: learning rate of the new word's vectors", advanced: true,
            defaultText: TrainingConfig.DefaultEmbeddingLr.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Add(nameof(TrainingConfig.Template), Inversion, "textual-inversion: captions as given, or kohya's object/style prompt templates",
            allowed: [.. TrainingConfig.Templates]);

        Add(nameof(TrainingConfig.ClipSkip), Objective, "use the n-th last CLIP layer (2 for anime models)");
        Add(nameof(TrainingConfig.NoiseOffset), Objective, "noise offset (0.05-0.1 helps very dark/bright images)", advanced: true);
        Add(nameof(TrainingConfig.MinSnrGamma), Objective, "min-SNR loss weighting gamma (5 is usual)", advanced: true);
        Add(nameof(TrainingConfig.VParameterization), Objective, "v-prediction objective (for v-prediction models)", advanced: true);

        Add(nameof(TrainingConfig.Device), Compute, "cpu, cuda or cuda:N", "DEVICE");
        Add(nameof(TrainingConfig.Dtype), Compute, "precision the frozen base model is held and computed in (auto: bf16 where this CPU computes it faster, else fp32)",
            allowed: ["auto", "fp32", "bf16", "fp16"], advanced: true);
        Add(nameof(TrainingConfig.MixedPrecision), Compute, "compute precision (bf16 halves memory on CPUs that support it)", allowed: ["no", "bf16", "fp16"]);
        Add(nameof(TrainingConfig.SavePrecision), Compute, "precision of the saved LoRA", allowed: ["fp16", "bf16", "fp32"], advanced: true);
        Add(nameof(TrainingConfig.GradientCheckpointing), Compute, "recompute activations in the backward pass: much less memory, ~1.5x slower");
        Add(nameof(TrainingConfig.CacheLatents), Compute, "encode every image once with the VAE before training", advanced: true);
        Add(nameof(TrainingConfig.CacheLatentsToDisk), Compute, "keep the latent cache in <output>/latent_cache for later runs", advanced: true);

        Add(nameof(TrainingConfig.SaveEveryNEpochs), Saving, "also save the LoRA (and state) every N epochs");
        Add(nameof(TrainingConfig.SaveLastNEpochs), Saving, "keep only the last N epoch LoRA files (older ones are deleted)", advanced: true);
        Add(nameof(TrainingConfig.SampleEveryNEpochs), Saving, "make sample images every N epochs (needs sample-prompts)");
        Add(nameof(TrainingConfig.Resume), Saving, "continue the run saved in the output folder");
        Add(nameof(TrainingConfig.Overwrite), Saving, "replace the run in the output folder (class images and latent cache are kept)");
        return list;
    }

    private static string KebabCase(string propertyName)
    {
        var sb = new System.Text.StringBuilder();
        for (int i = 0; i < propertyName.Length; i++)
        {
            char c = propertyName[i];
            if (char.IsUpper(c) && i > 0) sb.Append('-');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }
}
