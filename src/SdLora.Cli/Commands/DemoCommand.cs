using System.CommandLine;
using SdLora.IO;
using SdLora.Training;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>sdlora demo</c>: the whole DreamBooth-LoRA flow in about a minute on a laptop, with nothing to download: the bundled
/// tiny random-weight model, the bundled dog photos, a few generated class images, a short 128 px training, samples.
/// </summary>
public static class DemoCommand
{
    public const string DemoOutputName = "sks-dog-demo";

    public static Command Create(CliContext cli)
    {
        var output = CliOptions.Out("folder for the LoRA, loss.png and samples", "sdlora-demo");
        var steps = new Option<int>("--steps") { Description = "training steps", DefaultValueFactory = _ => 40 };
        var cmd = new Command("demo", "train a small DreamBooth LoRA on the bundled dog photos with the bundled tiny model (no downloads, about a minute)")
        {
            output, steps,
        };
        cmd.SetAction(r =>
        {
            var config = Config(r.GetValue(output)!, r.GetValue(steps));
            cli.Console.MarkupLine("[bold]sdlora demo[/]: DreamBooth LoRA on 5 bundled dog photos with the bundled tiny model.");
            cli.Console.MarkupLine("[grey]The tiny model has random weights, so every image it makes (class images, samples) is coloured noise: " +
                                   "the demo shows the flow and the files, not the pictures.[/]");
            string hint =
                "\n[bold]With a real SD1.5 checkpoint[/] (e.g. v1-5-pruned-emaonly.safetensors) the same training is:\n" +
                Markup.Escape($"  sdlora train --model v1-5-pruned-emaonly.safetensors --data \"{config.Data}\" --instance-prompt \"a photo of sks dog\" " +
                              "--class-prompt \"a photo of a dog\" --num-class-images 100 --resolution 512 --max-train-steps 800 " +
                              "--network-dim 32 --network-alpha 16 " +
                              $"--sample-prompts \"{config.SamplePrompts}\" --save-every-n-epochs 1 --output sks-dog-lora");
            return TrainCommand.Run(cli, config, hint);
        });
        return cmd;
    }

    /// <summary>The demo's training settings; writes its sample-prompt file into <paramref name="output"/>.</summary>
    public static TrainingConfig Config(string output, int steps, string? assetsDir = null)
    {
        assetsDir ??= Path.Combine(AppContext.BaseDirectory, "assets");
        var model = Path.Combine(assetsDir, "tiny-sd15");
        var data = Path.Combine(assetsDir, "dreambooth", "dog");
        if (!Directory.Exists(model) || !Directory.Exists(data))
            throw new SdLoraException($"the demo's bundled files are missing from {assetsDir} (tiny-sd15/ and dreambooth/dog/): reinstall sdlora or build it from the repository");
        // Re-running the demo replaces the previous demo run, and nothing else.
        bool previousDemo = File.Exists(Path.Combine(output, "run.json")) && RunFolder.ReadRunJson(Path.Combine(output, "run.json")).OutputName == DemoOutputName;
        Directory.CreateDirectory(output);
        var prompts = Path.Combine(output, "sample_prompts.txt");
        AtomicFile.WriteAllText(prompts, "# kohya-style sample prompts: --n negative, --w/--h size, --d seed, --l cfg, --s steps\n" +
                                         "a photo of sks dog --d 1 --s 20\n" +
                                         "a photo of sks dog in a bucket --n blurry, low quality --d 2 --s 20\n");
        return new TrainingConfig
        {
            Model = model, Data = data, Output = output, OutputName = DemoOutputName, Overwrite = previousDemo,
            InstancePrompt = "a photo of sks dog", ClassPrompt = "a photo of a dog", NumClassImages = 4, NumRepeats = 1,
            Resolution = Resolution.Square(128), MinBucketReso = 64, MaxBucketReso = 256, BucketResoSteps = 64,
            MaxTrainSteps = steps, SaveEveryNEpochs = 2, NetworkDim = 8, NetworkAlpha = 4, LearningRate = 1e-3, TextEncoderLr = 1e-4,
            SamplePrompts = prompts, Seed = 42,
            // The tiny model's tensors are small: one thread is as fast as several on an idle machine and an order of
            // magnitude faster on a busy one (threads then wait for each other at every operation).
            Threads = 1,
        };
    }
}
