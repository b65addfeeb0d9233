using System.CommandLine;
using SdLora.Imaging;
using SdLora.IO;
using SdLora.Pipelines;
using SdLora.Toy;
using SdLora.Training;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>sdlora demo</c>: the whole DreamBooth-LoRA flow in a few minutes on a laptop, with nothing to download. By default it
/// teaches the bundled toy model (which draws coloured shapes) a shape and colour it has never seen, from six rendered
/// pictures, and shows it: a contact sheet of the base model's pictures before and after, scored, with demo.json beside
/// it. With <c>--data</c> it trains on a folder of photos instead (the bundled dog photos, say), with the bundled tiny
/// random-weight model unless <c>--model</c> names a real one.
/// </summary>
public static class DemoCommand
{
    public const string DemoOutputName = "sks-dog-demo";
    public const int DefaultSteps = 40;
    /// <summary>Training steps of the toy demo.</summary>
    public const int ToyDefaultSteps = ToyDemo.DefaultSteps;
    /// <summary>The bundled toy model's folder under assets/.</summary>
    public const string ToyModelName = "toy-shapes";
    private const int Size = 128;

    public static Command Create(CliContext cli)
    {
        var output = CliOptions.Out("folder for the LoRA, contact sheet, demo.json, loss.png and class images (a previous demo there is replaced)", "sdlora-demo");
        var steps = new Option<int?>("--max-train-steps") { Description = $"training steps (default {ToyDefaultSteps}; {DefaultSteps} with --data)" };
        var oldSteps = new Option<int?>("--steps") { Hidden = true }; // the demo's first spelling; generate's --steps means sampling steps
        var data = new Option<string?>("--data") { Description = "train on this folder of photos instead of the toy world (e.g. assets/dreambooth/dog), as \"a photo of sks dog\"" };
        var model = CliOptions.Model();
        model.Description = "with --data: the SD1.x checkpoint to train on (default: the bundled tiny random-weight model)";
        var cmd = new Command("demo", "teach the bundled toy model a new shape with DreamBooth-LoRA and show it before/after (no downloads, 1-3 minutes)")
        {
            output, steps, oldSteps, data, model,
        };
        cmd.SetAction(r =>
        {
            int? trainSteps = r.GetValue(oldSteps) ?? r.GetValue(steps);
            if (cli.Threads is null)
            {
                // The small models' tensors are small: one thread is as fast as several on an idle machine and an order
                // of magnitude faster on a busy one (threads then wait for each other at every operation).
                cli.ApplyThreads(1);
                cli.Note("the demo runs on 1 torch thread (fastest for the small bundled models); --threads N to change");
            }
            if (r.GetValue(data) is { } photos) return RunPhotos(cli, r.GetValue(output)!, trainSteps ?? DefaultSteps, photos, r.GetValue(model));
            if (r.GetValue(model) is not null) throw new SdLoraException("--model: the toy demo uses the bundled toy model; give --data PHOTOS to train another model on photos");
            return RunToy(cli, r.GetValue(output)!, trainSteps ?? ToyDefaultSteps);
        });
        return cmd;
    }

    // -----------------------------------------------------------------------------------------------------------------
    // The toy demo (default).
    // -----------------------------------------------------------------------------------------------------------------

    /// <summary>What <see cref="PrepareToy"/> settled: the demo, the model, where instance pictures went, and the training settings.</summary>
    public sealed record ToyDemoPlan(ToyDemo Demo, string Model, string InstanceFolder, TrainingConfig Config);

    /// <summary>
    /// Checks <paramref name="output"/> is free for a demo (empty, a previous demo, or a run that never saved) and writable,
    /// then renders the instance pictures into it and returns the training settings.
    /// </summary>
    public static ToyDemoPlan PrepareToy(string output, int steps, string? assetsDir = null)
    {
        assetsDir ??= Path.Combine(AppContext.BaseDirectory, "assets");
        var model = Path.Combine(assetsDir, ToyModelName);
        if (!Directory.Exists(model))
            throw new SdLoraException($"the demo's bundled toy model is missing from {assetsDir} ({ToyModelName}/): reinstall sdlora or build it from the repository");
        if (steps < 1) throw new SdLoraException($"--max-train-steps {steps}: give at least 1 step");
        var folder = CheckDemoFolder(output, ToyDemo.OutputName, model);
        var demo = new ToyDemo();
        var instances = Path.Combine(folder, "instance_images");
        demo.WriteInstanceImages(instances);
        var config = demo.TrainingConfig(model, instances, output, steps, overwrite: RunFolder.HoldsRun(folder));
        return new ToyDemoPlan(demo, model, instances, config);
    }

    private static int RunToy(CliContext cli, string output, int steps)
    {
        var plan = PrepareToy(output, steps);
        var demo = plan.Demo;
        var folder = Path.GetFullPath(output);
        cli.Console.MarkupLineInterpolated($"[bold]sdlora demo[/]: teach the bundled toy model \"{ToyDemo.Token} {ToyWorld.ClassWord}\" = a {demo.Concept.ColourName} {demo.Concept.Shape} (a shape and colour it has never seen) from {ToyDemo.InstanceImages} pictures, with DreamBooth-LoRA, prior preservation and the word's own vectors (pivotal tuning).");
        using var model = cli.Status("loading the toy model", () => StableDiffusionModel.Load(plan.Model));
        var before = cli.Status($"before: \"{demo.ConceptPrompt}\" and \"{demo.ClassPrompt}\" with the base model", () => demo.Snapshot(model, null, cli.Cancellation));

        TrainingResult result;
        try { result = TrainView.Run(cli, new LoraTrainingSession(plan.Config, model)); }
        catch (OperationCanceledException)
        {
            cli.Console.MarkupLine("[yellow]stopped before training began[/]: nothing to save (run the demo again to start over)");
            return ExitCodes.Stopped;
        }
        TrainCommand.PrintSummary(cli, result);
        if (result.Cancelled || result.LoraPath is null) return ExitCodes.Stopped;

        var after = cli.Status($"after: the same seeds with the LoRA", () => demo.Snapshot(model, result.LoraPath, cli.Cancellation));
        var scores = ToyDemo.Measure(before, after, demo.Concept);
        ToyDemo.SavePictures(Path.Combine(folder, "before"), before);
        ToyDemo.SavePictures(Path.Combine(folder, "after"), after);
        var sheet = Path.Combine(folder, "contact_sheet.png");
        PngFile.Write(sheet, demo.ContactSheet(Directory.GetFiles(plan.InstanceFolder, "*.png").Order(StringComparer.Ordinal).ToList(), before, after, result.Steps));
        var classFolder = plan.Config.ClassData ?? Path.Combine(folder, "class_images");
        var json = Path.Combine(folder, "demo.json");
        AtomicFile.WriteAllText(json, demo.ReportJson(plan.Model, result.LoraPath, plan.InstanceFolder, classFolder, sheet, result.LossPng, result.Steps, scores));

        string Rel(string p) => Path.GetRelativePath(Environment.CurrentDirectory, p);
        cli.Console.WriteLine();
        cli.Console.MarkupLineInterpolated($"[green]contact sheet[/]: {Rel(sheet)}   (measurements: {Rel(json)})");
        cli.Console.WriteLine($"  \"{demo.ConceptPrompt}\" looks like the {demo.Concept.ColourName} {demo.Concept.Shape}: score {scores.ConceptBefore:F2} before -> {scores.ConceptAfter:F2} after " +
                              $"(shape right {scores.ConceptShapeRightBefore:P0} -> {scores.ConceptShapeRightAfter:P0})");
        cli.Console.WriteLine($"  \"{demo.ClassPrompt}\" (prior preservation): concept score {scores.ClassConceptBefore:F2} -> {scores.ClassConceptAfter:F2}, " +
                              $"pixels changed {scores.ClassDrift:P0} on average");
        var plain = cli.Console.Profile.Out.Writer;
        plain.WriteLine();
        plain.WriteLine("Generate with the LoRA just trained:");
        plain.WriteLine("  " + CommandLine("sdlora", "generate", "--model", plan.Model, "-p", $"a big {ToyDemo.Token} {ToyWorld.ClassWord} on the left on a white background <lora:{ToyDemo.OutputName}:1>",
            "--lora-dir", output, "-W", $"{ToyWorld.ImageSize}", "-H", $"{ToyWorld.ImageSize}", "--sampler", ToyEvaluation.Sampler, "--steps", $"{ToyEvaluation.Steps}",
            "--cfg", $"{ToyEvaluation.CfgScale}", "--seed", "1", "--out", Path.Combine(output, "generated")));
        plain.WriteLine("Re-check the scores (no model involved):");
        plain.WriteLine("  " + CommandLine("sdlora", "toy", "score", Path.Combine(output, "after", "concept"), "--prompt", demo.ConceptPrompt, "--concept", demo.Concept.Name));
        return ExitCodes.Ok;
    }

    // -----------------------------------------------------------------------------------------------------------------
    // The photo demo (--data).
    // -----------------------------------------------------------------------------------------------------------------

    private static int RunPhotos(CliContext cli, string output, int steps, string data, string? model)
    {
        var config = Prepare(output, steps, data: data, model: model);
        cli.Console.MarkupLineInterpolated($"[bold]sdlora demo[/]: DreamBooth LoRA on the photos in {data}.");
        if (model is null)
            cli.Console.MarkupLine("[grey]The bundled tiny model has random weights, so every image it makes (class images, samples) is coloured noise: " +
                                   "this shows the flow and the files, not the pictures; pass --model for a real checkpoint.[/]");
        return TrainCommand.Run(cli, config, result =>
        {
            if (result.Cancelled || result.LoraPath is null) return;
            // Written past Spectre, so no terminal width ever breaks the lines to copy.
            var plain = cli.Console.Profile.Out.Writer;
            plain.WriteLine();
            plain.WriteLine("Generate with the LoRA just trained:");
            plain.WriteLine("  " + GenerateCommandLine(config));
            plain.WriteLine();
            plain.WriteLine("With a real SD1.5 checkpoint (e.g. v1-5-pruned-emaonly.safetensors) the same training is (class images: 8 on a CPU, 100 on a GPU unless --num-class-images says otherwise):");
            plain.WriteLine("  " + RealModelTrainCommandLine(config));
        });
    }

    /// <summary>
    /// The photo demo's training settings for <paramref name="output"/>, after checking that the folder is free for a demo
    /// (empty, a previous demo, or a run that never saved) and writable; only then is its sample-prompt file written there.
    /// </summary>
    /// <param name="data">The photos (default: the bundled dog photos).</param>
    /// <param name="model">The checkpoint (default: the bundled tiny random-weight model).</param>
    public static TrainingConfig Prepare(string output, int steps, string? assetsDir = null, string? data = null, string? model = null)
    {
        assetsDir ??= Path.Combine(AppContext.BaseDirectory, "assets");
        model ??= Path.Combine(assetsDir, "tiny-sd15");
        data ??= Path.Combine(assetsDir, "dreambooth", "dog");
        if (!Directory.Exists(data)) throw new SdLoraException($"--data {data}: folder not found; give a folder of photos (e.g. assets/dreambooth/dog)");
        if (!Directory.Exists(model) && !File.Exists(model))
            throw new SdLoraException($"the demo's model {model} is missing: reinstall sdlora or build it from the repository, or pass --model");
        if (steps < 1) throw new SdLoraException($"--max-train-steps {steps}: give at least 1 step");
        var folder = CheckDemoFolder(output, DemoOutputName, data);
        bool previousDemo = RunFolder.HoldsRun(folder);

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

    /// <summary>
    /// Re-running the demo replaces the previous demo run (named <paramref name="outputName"/>) and nothing else: refuses
    /// a folder holding another run, a file, or an input. Creates the folder; returns its full path.
    /// </summary>
    private static string CheckDemoFolder(string output, string outputName, string input)
    {
        var folder = Path.GetFullPath(output);
        if (File.Exists(folder)) throw new SdLoraException($"--out {output} is a file: choose a folder with --out");
        if (RunFolder.HoldsRun(folder) && !IsDemoRun(folder, outputName))
            throw new SdLoraException($"--out {output} holds a training run that is not a demo (the demo replaces only its own runs): choose another folder with --out");
        OutputPath.CheckFolder(output, [input], "demo output folder");
        return folder;
    }

    private static bool IsDemoRun(string folder, string outputName)
    {
        var runJson = Path.Combine(folder, "run.json");
        try { return File.Exists(runJson) && RunFolder.ReadRunJson(runJson).OutputName == outputName; }
        catch (SdLoraException) { return false; }
    }

    /// <summary>The <c>sdlora generate</c> command that uses the photo demo's LoRA (with its model, unless the bundled tiny one, generate's default).</summary>
    public static string GenerateCommandLine(TrainingConfig demo)
    {
        bool tiny = Path.GetFileName(Path.TrimEndingDirectorySeparator(demo.Model ?? "")) == "tiny-sd15";
        string[] model = tiny ? [] : ["--model", demo.Model!];
        return CommandLine(["sdlora", "generate", .. model, "-p", $"a photo of sks dog <lora:{demo.OutputName}:1>", "--lora-dir", demo.Output!,
            "-W", $"{Size}", "-H", $"{Size}", "--steps", "20", "--seed", "1", "--out", Path.Combine(demo.Output!, "generated")]);
    }

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
