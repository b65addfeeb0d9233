using System.CommandLine;
using SdLora.IO;
using SdLora.Training;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>sdlora demo</c>: the whole DreamBooth-LoRA flow in about a minute on a laptop, with nothing to download: the bundled
/// tiny random-weight model, the bundled dog photos, a few generated class images, a short 128 px training, samples, and
/// at the end the <c>generate</c> command that uses the LoRA it made.
/// </summary>
public static class DemoCommand
{
    public const string DemoOutputName = "sks-dog-demo";
    public const int DefaultSteps = 40;
    private const int Size = 128;

    public static Command Create(CliContext cli)
    {
        var output = CliOptions.Out("folder for the LoRA, loss.png, samples and class images (a previous demo there is replaced)", "sdlora-demo");
        var steps = new Option<int>("--max-train-steps") { Description = "training steps", DefaultValueFactory = _ => DefaultSteps };
        var oldSteps = new Option<int?>("--steps") { Hidden = true }; // the demo's first spelling; generate's --steps means sampling steps
        var cmd = new Command("demo", "train a small DreamBooth LoRA on the bundled dog photos with the bundled tiny model (no downloads, about a minute)")
        {
            output, steps, oldSteps,
        };
        cmd.SetAction(r =>
        {
            int trainSteps = r.GetValue(oldSteps) ?? r.GetValue(steps);
            var config = Prepare(r.GetValue(output)!, trainSteps);
            if (cli.Threads is null)
            {
                // The tiny model's tensors are small: one thread is as fast as several on an idle machine and an order
                // of magnitude faster on a busy one (threads then wait for each other at every operation).
                cli.ApplyThreads(1);
                cli.Note("the demo runs on 1 torch thread (fastest for the tiny model); --threads N to change");
            }
            cli.Console.MarkupLine("[bold]sdlora demo[/]: DreamBooth LoRA on 5 bundled dog photos with the bundled tiny model.");
            cli.Console.MarkupLine("[grey]The tiny model has random weights, so every image it makes (class images, samples) is coloured noise: " +
                                   "the demo shows the flow and the files, not the pictures.[/]");
            return TrainCommand.Run(cli, config, result =>
            {
                if (result.Cancelled || result.LoraPath is null) return;
                // Written past Spectre, so no terminal width ever breaks the lines to copy.
                var plain = cli.Console.Profile.Out.Writer;
                plain.WriteLine();
                plain.WriteLine("Generate with the LoRA just trained (the tiny model again, so noise again):");
                plain.WriteLine("  " + GenerateCommandLine(config));
                plain.WriteLine();
                plain.WriteLine("With a real SD1.5 checkpoint (e.g. v1-5-pruned-emaonly.safetensors) the same training is (class images: 8 on a CPU, 100 on a GPU unless --num-class-images says otherwise):");
                plain.WriteLine("  " + RealModelTrainCommandLine(config));
            });
        });
        return cmd;
    }

    /// <summary>
    /// The demo's training settings for <paramref name="output"/>, after checking that the folder is free for a demo (empty,
    /// a previous demo, or a run that never saved) and writable; only then is its sample-prompt file written there.
    /// </summary>
    public static TrainingConfig Prepare(string output, int steps, string? assetsDir = null)
    {
        assetsDir ??= Path.Combine(AppContext.BaseDirectory, "assets");
        var model = Path.Combine(assetsDir, "tiny-sd15");
        var data = Path.Combine(assetsDir, "dreambooth", "dog");
        if (!Directory.Exists(model) || !Directory.Exists(data))
            throw new SdLoraException($"the demo's bundled files are missing from {assetsDir} (tiny-sd15/ and dreambooth/dog/): reinstall sdlora or build it from the repository");
        if (steps < 1) throw new SdLoraException($"--max-train-steps {steps}: give at least 1 step");
        var folder = Path.GetFullPath(output);
        if (File.Exists(folder)) throw new SdLoraException($"--out {output} is a file: choose a folder with --out");
        // Re-running the demo replaces the previous demo run, and nothing else.
        bool previousDemo = RunFolder.HoldsRun(folder);
        if (previousDemo && !IsDemoRun(folder))
            throw new SdLoraException($"--out {output} holds a training run that is not a demo (the demo replaces only its own runs): choose another folder with --out");
        OutputPath.CheckFolder(output, [data], "demo output folder");

        var prompts = Path.Combine(folder, "sample_prompts.txt");
        AtomicFile.WriteAllText(prompts, "# kohya-style sample prompts: --n negative, --w/--h size, --d seed, --l cfg, --s steps\n" +
                                         "a photo of sks dog --d 1 --s 20\n" +
                                         "a photo of sks dog in a bucket --n blurry, low quality --d 2 --s 20\n");
        return new TrainingConfig
        {
            Model = model, Data = data, Output = output, OutputName = DemoOutputName, Overwrite = previousDemo,
            InstancePrompt = "a photo of sks dog", ClassPrompt = "a photo of a dog", NumClassImages = 4, NumRepeats = 1,
            Resolution = Resolution.Square(Size), MinBucketReso = 64, MaxBucketReso = 256, BucketResoSteps = 64,
            MaxTrainSteps = steps, SaveEveryNEpochs = 2, NetworkDim = 8, NetworkAlpha = 4, LearningRate = 1e-3, TextEncoderLr = 1e-4,
            SamplePrompts = prompts, Seed = 42,
        };
    }

    private static bool IsDemoRun(string folder)
    {
        var runJson = Path.Combine(folder, "run.json");
        try { return File.Exists(runJson) && RunFolder.ReadRunJson(runJson).OutputName == DemoOutputName; }
        catch (SdLoraException) { return false; }
    }

    /// <summary>The <c>sdlora generate</c> command that uses the demo's LoRA, with the bundled tiny model (generate's default).</summary>
    public static string GenerateCommandLine(TrainingConfig demo) =>
        CommandLine("sdlora", "generate", "-p", $"a photo of sks dog <lora:{demo.OutputName}:1>", "--lora-dir", demo.Output!,
            "-W", $"{Size}", "-H", $"{Size}", "--steps", "20", "--seed", "1", "--out", Path.Combine(demo.Output!, "generated"));

    /// <summary>The same training on a real SD1.5 checkpoint, at 512 px.</summary>
    public static string RealModelTrainCommandLine(TrainingConfig demo) =>
        CommandLine("sdlora", "train", "--model", "v1-5-pruned-emaonly.safetensors", "--data", demo.Data!, "--instance-prompt", "a photo of sks dog",
            "--class-prompt", "a photo of a dog", "--resolution", "512", "--max-train-steps", "800",
            "--network-dim", "32", "--network-alpha", "16", "--sample-prompts", demo.SamplePrompts!, "--save-every-n-epochs", "1",
            "--out", "sks-dog-lora");

    /// <summary>Joins arguments into one shell line, double-quoting those that need it (POSIX shells; cmd and PowerShell on Windows).</summary>
    public static string CommandLine(params string[] args) => string.Join(" ", args.Select(Quote));

    private static string Quote(string a)
    {
        if (a.Length > 0 && a.All(c => char.IsAsciiLetterOrDigit(c) || "-_./:=,+@%".Contains(c))) return a;
        if (OperatingSystem.IsWindows()) return "\"" + a.Replace("\"", "\\\"") + "\"";
        return "\"" + a.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("$", "\\$").Replace("`", "\\`") + "\"";
    }
}
