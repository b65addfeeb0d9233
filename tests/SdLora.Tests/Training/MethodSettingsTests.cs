using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

/// <summary>The method setting, its per-method defaults, and what each method needs and refuses.</summary>
public class MethodSettingsTests
{
    private static Dictionary<string, object?> Paths(params (string, object?)[] more)
    {
        var d = new Dictionary<string, object?> { ["model"] = "m.safetensors", ["data"] = "d", ["output"] = "o" };
        foreach (var (k, v) in more) d[k] = v;
        return d;
    }

    [Fact]
    public void Each_method_has_its_own_learning_rates_and_output_name()
    {
        var lora = new TrainingConfig();
        Assert.Equal((1e-4, 5e-5, "lora"), (lora.EffectiveUnetLr, lora.EffectiveTextEncoderLr, lora.EffectiveOutputName));
        var db = TrainingConfig.ForMethod("dreambooth");
        Assert.Equal((2e-6, 2e-6, "model"), (db.EffectiveUnetLr, db.EffectiveTextEncoderLr, db.EffectiveOutputName));
        var ti = TrainingConfig.ForMethod("textual_inversion") with { TokenString = "sks" };
        Assert.Equal((5e-3, "sks"), (ti.LearningRate, ti.EffectiveOutputName));
        Assert.Equal(["sks", "sks1", "sks2"], (ti with { NumVectorsPerToken = 3 }).TokenStrings);
    }

    [Fact]
    public void Switching_method_moves_only_the_settings_left_at_their_defaults()
    {
        var tuned = new TrainingConfig { LearningRate = 3e-4, Seed = 9 }.WithMethod("dreambooth");
        Assert.Equal("dreambooth", tuned.Method);
        Assert.Equal(3e-4, tuned.LearningRate); // set on purpose: kept
        Assert.Null(tuned.TextEncoderLr);       // LoRA's default 5e-5 -> DreamBooth's (follow the learning rate)
        Assert.Equal(9, tuned.Seed);
        Assert.Equal(new TrainingConfig(), TrainingConfig.ForMethod("dreambooth").WithMethod("lora"));

        // From TOML or a form the method is applied first, whatever the order of the keys.
        var c = TrainingConfigLoader.Load(null, Paths(("learning_rate", "1e-4"), ("method", "dreambooth")));
        Assert.Equal((1e-4, "dreambooth"), (c.LearningRate, c.Method));
        var d = TrainingConfigLoader.Load(null, Paths(("method", "dreambooth")));
        Assert.Equal(2e-6, d.LearningRate);
    }

    [Fact]
    public void Command_line_method_gives_its_defaults_and_kohya_spellings_work()
    {
        using var tmp = Fixtures.TempDir();
        var toml = tmp.File("ti.toml");
        File.WriteAllText(toml, "[training]\nuse_object_template = true\nnum_vectors_per_token = 4\n");
        var (db, _) = TrainCommandTests.Parse("--method", "dreambooth", "--model", "m.safetensors", "--data", "img", "--out", "o", "--learning_rate_te", "1e-6", "--stop_text_encoder_training", "100");
        Assert.Equal((2e-6, 1e-6, 100), (db.LearningRate, db.TextEncoderLr, db.StopTextEncoderTraining));
        Assert.Equal(100, db.TextEncoderTrainingSteps);
        var (ti, _) = TrainCommandTests.Parse("--method", "textual-inversion", "--model", "m.safetensors", "--data", "img", "--out", "o", "--token_string", "sks", "--init_word", "dog", "--config", toml);
        Assert.Equal((5e-3, "object", 4, "dog"), (ti.LearningRate, ti.Template, ti.NumVectorsPerToken, ti.InitWord));
    }

    [Theory]
    [InlineData("token-string", "textual-inversion needs token-string", "method", "textual-inversion")]
    [InlineData("token-string", "token-string 'sks1' must be one word", "method", "textual-inversion", "token-string", "sks1")]
    [InlineData("token-string", "token-string 'my word' must be one word", "method", "textual-inversion", "token-string", "my word")]
    [InlineData("save-model-as", "save-model-as diffusers is for method dreambooth", "save-model-as", "diffusers")]
    [InlineData("save-model-as", "save-model-as ckpt is not written by sdlora", "method", "dreambooth", "save-model-as", "ckpt")]
    [InlineData("stop-text-encoder-training", "contradicts train-text-encoder", "method", "dreambooth", "train-text-encoder", "true", "stop-text-encoder-training", "-1")]
    [InlineData("num-vectors-per-token", "num-vectors-per-token must be between 1 and 75", "method", "textual-inversion", "token-string", "sks", "num-vectors-per-token", "80")]
    public void Settings_a_method_cannot_use_are_refused_naming_the_setting(string setting, string message, params string[] values)
    {
        var d = Paths();
        for (int i = 0; i < values.Length; i += 2) d[values[i]] = values[i + 1];
        var e = Assert.Throws<SdLoraException>(() => TrainingConfigLoader.Load(null, d));
        Assert.Equal(setting, e.Setting);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Method_metadata_describes_the_model_without_lora_network_fields()
    {
        var c = TrainingConfig.ForMethod("textual-inversion") with { TokenString = "sks", InitWord = "dog", NumVectorsPerToken = 2 };
        var data = new TrainingDataSummary(5, 0, 5, 50, 10, "{}", "{}", "{}", "{}");
        var md = c.ToMethodMetadata(data, DateTimeOffset.FromUnixTimeSeconds(1_700_000_000), "AdamW()");
        Assert.DoesNotContain(md.Keys, k => k.StartsWith("ss_network_"));
        Assert.Equal("stable-diffusion-v1/textual-inversion", md["modelspec.architecture"]);
        Assert.Equal("sks", md["modelspec.trigger_phrase"]);
        Assert.Equal("2", md["sdlora_num_vectors_per_token"]);
        Assert.Equal("2023-11-14", md["modelspec.date"]);
        var db = TrainingConfig.ForMethod("dreambooth").ToMethodMetadata(data, DateTimeOffset.UnixEpoch, "Adafactor()");
        Assert.Equal(("stable-diffusion-v1", "dreambooth", "Adafactor()"), (db["modelspec.architecture"], db["sdlora_method"], db["ss_optimizer"]));
    }
}
