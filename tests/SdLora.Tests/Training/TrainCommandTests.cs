using System.CommandLine;
using SdLora.Cli.Commands;
using SdLora.IO;
using SdLora.Tests.Cli;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class TrainCommandTests
{
    internal static (TrainingConfig Config, List<string> Notes) Parse(params string[] args)
    {
        var options = new TrainOptions();
        var command = new Command("train");
        options.AddTo(command);
        var parse = command.Parse(args);
        Assert.Empty(parse.Errors);
        var notes = new List<string>();
        return (options.ToConfig(parse, notes), notes);
    }

    [Fact]
    public void Options_become_settings_and_file_values_lose_to_them()
    {
        using var tmp = Fixtures.TempDir();
        var toml = tmp.File("train.toml");
        File.WriteAllText(toml, "learning-rate = 2e-4\nnetwork-dim = 8\nshuffle-caption = true\n");
        var (c, _) = Parse("--config", toml, "--model", "m.safetensors", "--data", "img", "--out", "o", "--network-dim", "16",
            "--resolution=640,512", "--enable-bucket", "false", "--flip-aug", "--optimizer-args", "weight_decay=0.1", "betas=0.9,0.99");
        Assert.Equal(2e-4, c.LearningRate);
        Assert.Equal(16, c.NetworkDim);
        Assert.True(c.ShuffleCaption);
        Assert.Equal(new Resolution(640, 512), c.Resolution);
        Assert.False(c.EnableBucket);
        Assert.True(c.FlipAug);
        Assert.Equal(["weight_decay=0.1", "betas=0.9,0.99"], c.OptimizerArgs);
        Assert.Equal("o", c.Output);
    }

    [Theory]
    [InlineData("--out")]
    [InlineData("--output")]
    [InlineData("-o")]
    [InlineData("--output_dir")]
    public void Output_folder_has_every_usual_spelling(string flag)
    {
        var (c, _) = Parse("--model", "m", "--data", "d", flag, "runs/x");
        Assert.Equal("runs/x", c.Output);
    }

    [Fact]
    public void Pasted_kohya_command_works_with_notes_for_what_does_not_apply()
    {
        var (c, notes) = Parse("--pretrained_model_name_or_path", "sd15.safetensors", "--train_data_dir", "img", "--output_dir", "out",
            "--xformers", "--save_state", "--save_model_as", "safetensors", "--save_last_n_epochs", "2", "--save_every_n_epochs", "1",
            "--learning_rate", "1e-4", "--optimizer_type", "Lion", "--mixed_precision", "bf16", "--cache_latents", "--max_train_epochs", "4");
        Assert.Equal("sd15.safetensors", c.Model);
        Assert.Equal("img", c.Data);
        Assert.Equal(2, c.SaveLastNEpochs);
        Assert.Equal("Lion", c.Optimizer);
        Assert.Equal("bf16", c.MixedPrecision);
        Assert.Equal(4, c.MaxTrainEpochs);
        Assert.Equal(2, notes.Count);
        Assert.Contains(notes, n => n.StartsWith("xformers: "));
        Assert.Contains(notes, n => n.StartsWith("save-state: "));
    }

    [Fact]
    public void Help_describes_each_option_with_default_and_choices_and_leaks_nothing()
    {
        var help = CliRunner.Run("train", "--help");
        Assert.Equal(0, help.ExitCode);
        Assert.Contains("--learning-rate <LR>", help.Out);
        Assert.Contains("learning rate (UNet, and text encoder unless text-encoder-lr is set) [default: 0.0001; dreambooth: 2e-06;", help.Out);
        Assert.Contains("optimizer: AdamW, Lion, Prodigy, Adafactor", help.Out);
        Assert.Contains("new word embeddings (textual-inversion): lora, dreambooth, textual-inversion [default: lora]", help.Out);
        Assert.Contains("learning-rate schedule: constant, constant_with_warmup, cosine", help.Out);
        Assert.Contains("-o, --out, --output <DIR>", help.Out);
        Assert.DoesNotContain("--learning_rate", help.Out); // kohya spellings work but stay out of the help
        Assert.DoesNotContain("Additional Arguments", help.Out);
        Assert.DoesNotContain("Training flags", help.Out);

        var bench = CliRunner.Run("bench", "train", "--help");
        Assert.Equal(0, bench.ExitCode);
        Assert.DoesNotContain("--learning-rate", bench.Out);
        Assert.DoesNotContain("Training flags", bench.Out);
    }

    [Fact]
    public void Bad_value_is_a_parse_error_naming_the_option_before_anything_runs()
    {
        using var tmp = Fixtures.TempDir();
        var run = CliRunner.Run("train", "--data", tmp.Path, "--out", tmp.File("out"), "--network-dim", "abc");
        Assert.Equal(2, run.ExitCode);
        Assert.Contains("network-dim must be a whole number (got 'abc')", run.Err + run.Out);
        Assert.False(CliRunner.HasStackTrace(run.Err + run.Out), run.ToString());
        Assert.False(Directory.Exists(tmp.File("out")));

        var choice = CliRunner.Run("train", "--data", tmp.Path, "--out", tmp.File("out"), "--optimizer", "SGD");
        Assert.Equal(2, choice.ExitCode);
        Assert.Contains("--optimizer 'SGD' is not one of AdamW, Lion, Prodigy", choice.Err + choice.Out);
    }

    [Fact]
    public void Unwritable_output_fails_in_one_line_before_the_model_loads()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("file"), "x");
        TrainingTestData.CopyPhotos("dog", tmp.File("data"), 1);
        var run = CliRunner.Run("train", "--data", tmp.File("data"), "--instance-prompt", "sks dog", "--out", Path.Combine(tmp.File("file"), "run"));
        Assert.Equal(2, run.ExitCode);
        Assert.Contains("cannot write the output folder there", run.Err);
        Assert.DoesNotContain("loading", run.Out);
        Assert.False(CliRunner.HasStackTrace(run.Err), run.ToString());
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Kohya_style_command_trains_end_to_end()
    {
        using var tmp = Fixtures.TempDir();
        TrainingTestData.CopyPhotos("dog", tmp.File("data"), 1);
        var run = CliRunner.Run("train", "--pretrained_model_name_or_path", Fixtures.CopiedSet("tiny-sd15"), "--train_data_dir", tmp.File("data"),
            "--instance_prompt", "a photo of sks dog", "--output_dir", tmp.File("out"), "--output_name", "sks", "--resolution", "64",
            "--max_train_steps", "3", "--network_dim", "4", "--num_repeats", "1", "--save_every_n_epochs", "1", "--save_last_n_epochs", "1",
            "--xformers", "--save_state", "--save_model_as", "safetensors");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("note: xformers: not needed", run.Err);
        Assert.Equal(["sks-000002.safetensors", "sks.safetensors"],
            Directory.GetFiles(tmp.File("out"), "*.safetensors").Select(f => Path.GetFileName(f)).Order().ToArray());
        using var lora = SafetensorsFile.Open(tmp.File("out/sks.safetensors"));
        Assert.Equal("3", lora.Metadata["ss_steps"]);
        Assert.Equal("64", lora.Metadata["ss_min_bucket_reso"]);
    }
}
