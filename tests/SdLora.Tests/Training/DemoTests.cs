using SdLora.Cli.Commands;
using SdLora.Imaging;
using SdLora.IO;
using System.Text.Json;
using SdLora.Pipelines;
using SdLora.Toy;
using SdLora.Tests.Cli;
using SdLora.Text;
using SdLora.Training;
using TorchSharp;
using Xunit;

namespace SdLora.Tests.Training;

public class DemoTests
{
    private static string Assets => Path.Combine(Fixtures.RepoRoot, "assets");

    /// <summary>Splits a printed shell line into arguments (double quotes with backslash escapes, as the demo writes them).</summary>
    private static List<string> ShellWords(string line)
    {
        var words = new List<string>();
        var current = new System.Text.StringBuilder();
        bool quoted = false, any = false;
        for (int i = 0; i < line.Length; i++)
        {
            char ch = line[i];
            if (quoted && ch == '\\' && i + 1 < line.Length && !OperatingSystem.IsWindows()) { current.Append(line[++i]); continue; }
            if (ch == '"') { quoted = !quoted; any = true; continue; }
            if (ch == ' ' && !quoted)
            {
                if (any || current.Length > 0) words.Add(current.ToString());
                current.Clear(); any = false;
                continue;
            }
            current.Append(ch);
        }
        if (any || current.Length > 0) words.Add(current.ToString());
        return words;
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Toy_demo_teaches_the_concept_writes_its_contact_sheet_and_measurements_and_prints_commands_that_run()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("sdlora demo"); // a space, so the printed commands must quote it
        // The thread count the process already has: the demo would otherwise set 1, and tests share the process.
        var threads = torch.get_num_threads().ToString();
        var run = CliRunner.Run("demo", "--out", output, "--max-train-steps", "4", "--threads", threads);
        Assert.True(run.ExitCode == 0, run.ToString());
        var demo = new ToyDemo();
        Assert.Equal(ToyDemo.InstanceImages, Directory.GetFiles(Path.Combine(output, "instance_images"), "*.png").Length);
        Assert.Equal(demo.TrainingConfig("m", "d", "o", 1, false).NumClassImages, ClassImageFolder.CountExisting(Path.Combine(output, "class_images")));
        Assert.True(File.Exists(Path.Combine(output, "loss.png")));
        var sheet = RgbImage.Load(Path.Combine(output, "contact_sheet.png"));
        Assert.True(sheet.Width > 6 * 96 && sheet.Height > 5 * 96, $"{sheet.Width}x{sheet.Height}");
        using (var lora = SafetensorsFile.Open(Path.Combine(output, ToyDemo.OutputName + ".safetensors")))
        {
            Assert.Equal("4", lora.Metadata["ss_steps"]);
            Assert.Contains(lora.Keys, k => k.StartsWith("lora_te_"));
        }

        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "demo.json"))))
        {
            var root = json.RootElement;
            Assert.Equal(demo.InstancePrompt, root.GetProperty("instance_prompt").GetString());
            Assert.Equal(demo.ClassPrompt, root.GetProperty("class_prompt").GetString());
            Assert.EndsWith(DemoCommand.ToyModelName, root.GetProperty("model").GetString());
            Assert.Equal(Path.Combine(Path.GetFullPath(output), ToyDemo.OutputName + ".safetensors"), root.GetProperty("lora").GetString());
            // The word's vectors (pivotal tuning) lie beside the LoRA, where generation finds them.
            Assert.Equal(ToyDemo.Token, root.GetProperty("token").GetString());
            var embedding = root.GetProperty("embedding").GetString()!;
            Assert.Equal(Path.Combine(Path.GetFullPath(output), ToyDemo.OutputName + ".embeddings", ToyDemo.Token + ".safetensors"), embedding);
            using (var e = TextualInversionEmbedding.Read(embedding)) Assert.Equal(1, e.VectorCount);
            Assert.Equal(Path.Combine(Path.GetFullPath(output), "instance_images"), root.GetProperty("instance_images").GetString());
            Assert.Equal(Path.Combine(Path.GetFullPath(output), "contact_sheet.png"), root.GetProperty("contact_sheet").GetString());
            Assert.Equal(demo.Seeds, root.GetProperty("seeds").EnumerateArray().Select(e => e.GetInt64()));
            var scores = root.GetProperty("scores");
            foreach (var key in new[] { "concept_score_before", "concept_score_after", "class_drift" })
                Assert.InRange(scores.GetProperty(key).GetDouble(), 0, 1);

            // The scores re-check from the saved pictures, with no model.
            var after = Directory.GetFiles(Path.Combine(output, "after", "concept"), "*.png");
            Assert.Equal(demo.Seeds.Count, after.Length);
            double rescored = after.Average(f => ToyScorer.Score(RgbImage.Load(f), demo.Target).Overall);
            Assert.Equal(scores.GetProperty("concept_score_after").GetDouble(), rescored, 6);
        }

        // The closing commands run as printed.
        var lines = run.Out.Split('\n').Select(l => l.Trim()).ToList();
        var generate = CliRunner.Run([.. ShellWords(lines.Single(l => l.StartsWith("sdlora generate "))).Skip(1), "--threads", threads]);
        Assert.True(generate.ExitCode == 0, generate.ToString());
        var png = Assert.Single(Directory.GetFiles(Path.Combine(output, "generated"), "*.png"));
        var generated = GenerationParameters.Parse(PngFile.ReadText(png)["parameters"]);
        Assert.Contains(generated.LoraHashes, h => h.Key == ToyDemo.OutputName);
        Assert.Contains(generated.TextualInversionHashes, h => h.Key == ToyDemo.Token); // the LoRA's word came with it
        var score = CliRunner.Run([.. ShellWords(lines.Single(l => l.StartsWith("sdlora toy score "))).Skip(1)]);
        Assert.True(score.ExitCode == 0, score.ToString());
        Assert.Contains("mean score", score.Out);

        // A second demo replaces the first, reusing its class images.
        var again = CliRunner.Run("demo", "--out", output, "--max-train-steps", "2", "--threads", threads);
        Assert.True(again.ExitCode == 0, again.ToString());
        Assert.DoesNotContain("class images generated", again.Out);
        using (var lora = SafetensorsFile.Open(Path.Combine(output, ToyDemo.OutputName + ".safetensors")))
            Assert.Equal("2", lora.Metadata["ss_steps"]);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Photo_demo_trains_reruns_over_itself_and_prints_a_generate_command_that_runs()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("sdlora demo");
        var threads = torch.get_num_threads().ToString();
        var dog = Path.Combine(Assets, "dreambooth", "dog");
        var first = CliRunner.Run("demo", "--data", dog, "--out", output, "--max-train-steps", "4", "--threads", threads);
        Assert.True(first.ExitCode == 0, first.ToString());
        Assert.Equal(4, ClassImageFolder.CountExisting(Path.Combine(output, "class_images")));
        Assert.True(File.Exists(Path.Combine(output, "loss.png")));
        Assert.Equal(2, Directory.GetFiles(Path.Combine(output, "samples"), "*.png").Length);
        using (var lora = SafetensorsFile.Open(Path.Combine(output, DemoCommand.DemoOutputName + ".safetensors")))
        {
            Assert.Equal("4", lora.Metadata["ss_steps"]);
            Assert.Equal("5", lora.Metadata["ss_num_train_images"]);
            Assert.Contains(lora.Keys, k => k.StartsWith("lora_te_"));
        }

        // A second demo replaces the first (reusing its class images); the old spelling --steps still works.
        var again = CliRunner.Run("demo", "--data", dog, "--output", output, "--steps", "2", "--threads", threads);
        Assert.True(again.ExitCode == 0, again.ToString());
        Assert.DoesNotContain("class images generated", again.Out);
        using (var lora = SafetensorsFile.Open(Path.Combine(output, DemoCommand.DemoOutputName + ".safetensors")))
            Assert.Equal("2", lora.Metadata["ss_steps"]);

        // The closing generate command runs as printed and uses the LoRA just trained.
        var line = again.Out.Split('\n').Select(l => l.Trim()).Single(l => l.StartsWith("sdlora generate "));
        var words = ShellWords(line);
        Assert.Equal("sdlora", words[0]);
        var generated = CliRunner.Run([.. words.Skip(1), "--threads", threads]);
        Assert.True(generated.ExitCode == 0, generated.ToString());
        var png = Assert.Single(Directory.GetFiles(Path.Combine(output, "generated"), "*.png"));
        var parameters = GenerationParameters.Parse(PngFile.ReadText(png)["parameters"]);
        Assert.Contains(parameters.LoraHashes, h => h.Key == DemoCommand.DemoOutputName);
        Assert.Contains(again.Out.Split('\n'), l => l.Trim().StartsWith("sdlora train --model v1-5-pruned-emaonly.safetensors"));
    }

    [Fact]
    public void Demo_refuses_a_folder_holding_another_run_before_writing_anything_and_names_only_its_own_options()
    {
        using var dir = Fixtures.TempDir();
        var run = RunFolder.Prepare(dir.File("taken"), resume: false, overwrite: false);
        run.WriteRunJson(new TrainingConfig { OutputName = "my-dog" });
        Directory.CreateDirectory(run.StateDir);
        File.WriteAllText(Path.Combine(run.StateDir, "state.json"), "{}");

        var e = Assert.Throws<SdLoraException>(() => DemoCommand.Prepare(dir.File("taken"), 4, Assets));
        Assert.Equal($"--out {dir.File("taken")} holds a training run that is not a demo (the demo replaces only its own runs): choose another folder with --out", e.Message);
        var toy = Assert.Throws<SdLoraException>(() => DemoCommand.PrepareToy(dir.File("taken"), 4, Assets));
        Assert.Equal(e.Message, toy.Message);
        Assert.False(Directory.Exists(Path.Combine(dir.File("taken"), "instance_images")));
        Assert.False(File.Exists(Path.Combine(dir.File("taken"), "sample_prompts.txt")));

        var cli = CliRunner.Run("demo", "--out", dir.File("taken"));
        Assert.Equal(2, cli.ExitCode);
        Assert.DoesNotContain("--resume", cli.Err);
        Assert.DoesNotContain("--overwrite", cli.Err);
        Assert.False(File.Exists(Path.Combine(dir.File("taken"), "sample_prompts.txt")));
    }

    [Fact]
    public void Demo_settings_validate_and_a_fresh_or_unsaved_folder_is_fine()
    {
        using var dir = Fixtures.TempDir();
        var fresh = DemoCommand.Prepare(dir.File("new"), 40, Assets);
        Assert.False(fresh.Overwrite);
        Assert.True(File.Exists(fresh.SamplePrompts));
        Assert.Equal(2, SamplePrompts.Read(fresh.SamplePrompts!, 128, 128, 1).Count);
        fresh.Validate();

        // What a demo stopped during its class images leaves: run.json, no saved state.
        Directory.CreateDirectory(dir.File("unsaved"));
        File.WriteAllText(Path.Combine(dir.File("unsaved"), "run.json"), "{}");
        var unsaved = DemoCommand.Prepare(dir.File("unsaved"), 40, Assets);
        Assert.False(unsaved.Overwrite);
    }
}
