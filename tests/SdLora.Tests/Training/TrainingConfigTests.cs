using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class TrainingConfigTests
{
    private static Dictionary<string, object?> Paths() => new() { ["model"] = "m.safetensors", ["data"] = "d", ["output"] = "o" };

    [Fact]
    public void Defaults_follow_the_kohya_colab()
    {
        var c = TrainingConfigLoader.Load(null, Paths());
        Assert.Equal(32, c.NetworkDim);
        Assert.Equal(16, c.NetworkAlpha);
        Assert.Equal(1e-4, c.EffectiveUnetLr);
        Assert.Equal(5e-5, c.EffectiveTextEncoderLr);
        Assert.Equal(Resolution.Square(512), c.Resolution);
        Assert.Equal(10, c.NumRepeats);
        Assert.Equal(10, c.MaxTrainEpochs);
        Assert.Equal("AdamW", c.Optimizer);
        Assert.Equal("constant", c.LrScheduler);
    }

    [Fact]
    public void Toml_keys_mirror_flags_and_flags_override_the_file()
    {
        using var tmp = Fixtures.TempDir();
        var toml = tmp.File("train.toml");
        File.WriteAllText(toml, """
            model = "base.safetensors"
            data = "photos"
            output = "out"
            learning-rate = 2e-4
            network-dim = 8
            resolution = "512,768"
            shuffle-caption = true
            optimizer-args = ["weight_decay=0.1"]
            """);
        var c = TrainingConfigLoader.Load(toml, new Dictionary<string, object?> { ["--network-dim"] = "16", ["seed"] = 7 });
        Assert.Equal(2e-4, c.LearningRate);
        Assert.Equal(16, c.NetworkDim); // flag wins
        Assert.Equal(7, c.Seed);
        Assert.Equal(new Resolution(512, 768), c.Resolution);
        Assert.True(c.ShuffleCaption);
        Assert.Equal(["weight_decay=0.1"], c.OptimizerArgs);
        Assert.Equal("base.safetensors", c.Model);
    }

    [Fact]
    public void Kohya_snake_case_toml_with_sections_is_accepted()
    {
        using var tmp = Fixtures.TempDir();
        var toml = tmp.File("kohya.toml");
        File.WriteAllText(toml, """
            [model_arguments]
            pretrained_model_name_or_path = "sd15.safetensors"
            [dataset_arguments]
            train_data_dir = "img"
            resolution = 768
            caption_dropout_rate = 0.05
            [training_arguments]
            output_dir = "out"
            optimizer_type = "Lion"
            max_train_epochs = 4
            network_module = "networks.lora"
            save_model_as = "safetensors"
            xformers = true
            """);
        var notes = new List<string>();
        var c = TrainingConfigLoader.Load(toml, null, notes: notes);
        Assert.Equal("sd15.safetensors", c.Model);
        Assert.Equal("img", c.Data);
        Assert.Equal(Resolution.Square(768), c.Resolution);
        Assert.Equal(0.05, c.CaptionDropout);
        Assert.Equal("Lion", c.Optimizer);
        Assert.Equal(4, c.MaxTrainEpochs);
        Assert.Equal([$"{toml}: xformers: not needed (sdlora uses torch's scaled-dot-product attention); ignored"], notes);
    }

    /// <summary>A settings file that cannot be used is named, with what is wrong in it (the TOML parser's own words, line and column).</summary>
    [Theory]
    [InlineData("learning-rat = 1e-4\n", "unknown setting 'learning-rat' (did you mean 'learning-rate'?)")]
    [InlineData("learning-rate = = 3\n", "not valid TOML: (1,17) : error : Unexpected token `=` while parsing a value.")]
    [InlineData("a = = 1\nb = = 2\n", "not valid TOML: (1,5) : error : Unexpected token `=` while parsing a value.")]
    [InlineData("[model_arguments]\nlearning_rate = 1e-4\n[training_arguments]\nlearning_rate = 2e-4\n",
        "key 'learning_rate' is set twice (in two sections); keep one")]
    public void A_settings_file_that_cannot_be_used_is_refused_with_its_name(string contents, string message)
    {
        using var tmp = Fixtures.TempDir();
        var toml = tmp.File("settings.toml");
        File.WriteAllText(toml, contents);
        var ex = Assert.Throws<SdLoraException>(() => TrainingConfigLoader.Load(toml, Paths()));
        Assert.Equal($"{toml}: {message}", ex.Message);
    }

    [Fact]
    public void A_missing_settings_file_is_refused_by_name()
    {
        using var tmp = Fixtures.TempDir();
        var missing = tmp.File("none.toml");
        var ex = Assert.Throws<SdLoraException>(() => TrainingConfigLoader.Load(missing, Paths()));
        Assert.Equal($"{missing}: settings file not found", ex.Message);
    }

    [Fact]
    public void An_unknown_setting_given_directly_names_no_file_and_the_nearest_name()
    {
        var o = Paths();
        o["netwrk-dim"] = "8";
        var ex = Assert.Throws<SdLoraException>(() => TrainingConfigLoader.Load(null, o));
        Assert.Equal("unknown setting 'netwrk-dim' (did you mean 'network-dim'?)", ex.Message);
    }

    [Theory]
    [InlineData("learning-rate", "-1", "learning-rate must be > 0 (got -1)")]
    [InlineData("learning_rate", "-1", "learning-rate must be > 0 (got -1)")]
    [InlineData("train-batch-size", "0", "train-batch-size must be >= 1 (got 0)")]
    [InlineData("caption-dropout", "1.5", "caption-dropout must be between 0 and 1 (got 1.5)")]
    [InlineData("lr-scheduler", "step", "lr-scheduler 'step' is not supported: use constant, constant_with_warmup, cosine, cosine_with_restarts, linear, polynomial")]
    [InlineData("optimizer", "AdamW8bit", "optimizer AdamW8bit needs bitsandbytes, which has no .NET build: use AdamW (same update, full-precision state)")]
    [InlineData("network-dim", "abc", "network-dim must be a whole number (got 'abc')")]
    [InlineData("resolution", "big", "resolution 'big' is not a size: use 512 or 512,768 (width,height)")]
    [InlineData("clip-skip", "0", "clip-skip must be between 1 and 12 (got 0); 2 is the usual choice for anime models")]
    public void Bad_values_name_the_setting_not_a_flag_spelling(string key, string value, string message)
    {
        var o = Paths();
        o[key] = value;
        var ex = Assert.Throws<SdLoraException>(() => TrainingConfigLoader.Load(null, o));
        Assert.Equal(message, ex.Message);
        Assert.Equal(TrainingSettings.Get(key).Name, ex.Setting);
    }

    [Fact]
    public void Missing_data_is_reported()
    {
        var ex = Assert.Throws<SdLoraException>(() => TrainingConfigLoader.Load(null, new Dictionary<string, object?> { ["model"] = "m" }));
        Assert.StartsWith("data is required", ex.Message);
    }

    [Fact]
    public void Warmup_ratio_is_scaled_by_total_steps()
    {
        var c = TrainingConfigLoader.Load(null, new Dictionary<string, object?>(Paths()) { ["lr-warmup-steps"] = "0.1" });
        Assert.Equal(25, c.WarmupSteps(250));
        Assert.Equal(30, (c with { LrWarmupSteps = 30 }).WarmupSteps(250));
    }

    [Fact]
    public void Run_json_round_trips_the_config()
    {
        using var tmp = Fixtures.TempDir();
        var c = TrainingConfigLoader.Load(null, new Dictionary<string, object?>(Paths()) { ["resolution"] = "640,512", ["optimizer-args"] = "d_coef=2", ["min-snr-gamma"] = "5" });
        var run = RunFolder.Prepare(tmp.File("out"), resume: false, overwrite: false);
        run.WriteRunJson(c);
        Assert.Contains("\"train-batch-size\": 1", File.ReadAllText(run.RunJson));
        var back = RunFolder.ReadRunJson(run.RunJson);
        Assert.Equal(c.Resolution, back.Resolution);
        Assert.Equal(c.OptimizerArgs, back.OptimizerArgs);
        Assert.Equal(c.MinSnrGamma, back.MinSnrGamma);
        Assert.Equal(c.TextEncoderLr, back.TextEncoderLr);
    }
}

public class TrainingConfigValidationTests
{
    [Fact]
    public void Random_crop_with_cached_latents_is_refused()
    {
        var ex = Assert.Throws<SdLoraException>(() => new TrainingConfig { RandomCrop = true }.Validate(requirePaths: false));
        Assert.StartsWith("random-crop gives a new crop every epoch", ex.Message);
        new TrainingConfig { RandomCrop = true, CacheLatents = false }.Validate(requirePaths: false);
    }
}
