using System.CommandLine;
using System.Globalization;
using SdLora.Imaging;
using SdLora.IO;
using SdLora.Toy;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>sdlora toy build|render|score</c>: the toy world the bundled toy model was trained on. <c>build</c> trains the model
/// from scratch; <c>render</c> draws the world's pictures of a prompt or a held-out concept (training data);
/// <c>score</c> measures how well pictures show a prompt, without any model.
/// </summary>
public static class ToyCommand
{
    public static Command Create(CliContext cli)
    {
        var cmd = new Command("toy", "the toy world of the bundled toy model: build the model, render its pictures, score pictures against prompts");
        cmd.Subcommands.Add(Build(cli));
        cmd.Subcommands.Add(Render(cli));
        cmd.Subcommands.Add(Score(cli));
        return cmd;
    }

    private static Command Build(CliContext cli)
    {
        var output = CliOptions.Out("folder for the model (diffusers layout, with README.md card and samples.png)");
        var minutes = new Option<double>("--minutes") { Description = "time budget for the whole build, in minutes (sets the step counts)", DefaultValueFactory = _ => 45 };
        var seed = new Option<long>("--seed") { Description = "seed of everything random in the build", DefaultValueFactory = _ => 1 };
        var vaeSteps = new Option<int?>("--vae-steps") { Description = "VAE training steps (default: from the time budget)" };
        var unetSteps = new Option<int?>("--unet-steps") { Description = "UNet + text encoder training steps (default: from the time budget)" };
        var vaeFrom = new Option<string?>("--vae-from") { Description = "reuse the VAE of this toy model folder (skips the VAE stage)" };
        var unetFrom = new Option<string?>("--unet-from") { Description = "start the UNet and text encoder from this toy model folder (train a built model further)" };
        var defaults = new ToyBuildOptions();
        var noiseOffset = new Option<double>("--noise-offset") { Description = "offset noise of the UNet stage (lets the prompt, not the seed, set the background)", DefaultValueFactory = _ => defaults.NoiseOffset };
        var unetLr = new Option<double>("--unet-lr") { Description = "learning rate of the UNet stage", DefaultValueFactory = _ => defaults.UNetLearningRate };
        var textEncoderLr = new Option<double>("--text-encoder-lr") { Description = "learning rate of the text encoder (trained with the UNet)", DefaultValueFactory = _ => defaults.TextEncoderLearningRate };
        var unetBatch = new Option<int>("--unet-batch") { Description = "pictures per step of the UNet stage", DefaultValueFactory = _ => defaults.UNetBatch };
        var debiased = new Option<bool>("--debiased-loss") { Description = "weight the UNet loss by 1/sqrt(SNR), as kohya's --debiased_estimation_loss", DefaultValueFactory = _ => defaults.DebiasedEstimation };
        var overwrite = CliOptions.Overwrite();
        var cmd = new Command("build", "train the toy model from scratch (VAE, then UNet + text encoder) and write it as a diffusers folder with a card")
        {
            output, minutes, seed, vaeSteps, unetSteps, vaeFrom, unetFrom, unetLr, textEncoderLr, unetBatch, noiseOffset, debiased, overwrite,
        };
        cmd.SetAction(r =>
        {
            var options = new ToyBuildOptions
            {
                Minutes = r.GetValue(minutes), Seed = r.GetValue(seed), VaeSteps = r.GetValue(vaeSteps), UNetSteps = r.GetValue(unetSteps),
                VaeFrom = r.GetValue(vaeFrom), UNetFrom = r.GetValue(unetFrom), NoiseOffset = r.GetValue(noiseOffset), DebiasedEstimation = r.GetValue(debiased), UNetLearningRate = r.GetValue(unetLr), TextEncoderLearningRate = r.GetValue(textEncoderLr),
                UNetBatch = r.GetValue(unetBatch),
            }.Validate();
            if (options.VaeFrom is { } from && !Directory.Exists(Path.Combine(from, "vae")))
                throw new SdLoraException($"--vae-from {from}: not a model folder with a vae/ inside; give a folder `sdlora toy build` wrote");
            if (options.UNetFrom is { } uFrom && !Directory.Exists(Path.Combine(uFrom, "unet")))
                throw new SdLoraException($"--unet-from {uFrom}: not a model folder with a unet/ inside; give a folder `sdlora toy build` wrote");
            // A stopped build said "run the same command again": its own partly trained output is replaced without --overwrite.
            var outputPath = r.GetValue(output)!;
            bool goesOn = ToyModelBuilder.HasStoppedBuild(outputPath);
            var folder = OutputPath.CheckReplacedFolder(outputPath, r.GetValue(overwrite) || goesOn, [options.VaeFrom, options.UNetFrom], what: "model folder");
            if (cli.Threads is null)
            {
                cli.ApplyThreads(1);
                cli.Note("the build runs on 1 torch thread (the toy model's tensors are small; fastest on a shared machine); --threads N to change");
            }
            var builder = new ToyModelBuilder(options);
            ToyBuildResult result = null!;
            var last = DateTime.MinValue;
            string? stage = null;
            result = builder.Build(folder, new SyncProgress<ToyBuildProgress>(p =>
            {
                bool newStage = p.Stage != stage;
                stage = p.Stage;
                if (newStage || p.Step == p.Steps || DateTime.UtcNow - last > cli.PlainProgressInterval)
                {
                    last = DateTime.UtcNow;
                    cli.Console.WriteLine(Describe(p));
                }
            }), cli.Cancellation);
            var e = result.Evaluation;
            cli.Console.WriteLine();
            cli.Console.MarkupLineInterpolated($"[green]done[/]: {result.OutputDir} in {result.Elapsed:hh\\:mm\\:ss} (VAE {result.VaeSteps} steps, UNet {result.UNetSteps} steps{(result.StoppedEarly ? ", stopped early" : "")})");
            if (result.StoppedEarly)
            {
                cli.Console.WriteLine("  stopped before the evaluation: run the same command again to go on from the stop");
                return ExitCodes.Stopped;
            }
            cli.Console.WriteLine($"  base prompts: score {e.Overall:F2}, shape right {e.ShapeAccuracy:P0}, colour right {e.ColourAccuracy:P0}, background right {e.BackgroundAccuracy:P0} ({e.Images} images)");
            cli.Console.WriteLine($"  card: {Path.Combine(result.OutputDir, "README.md")}; samples: {Path.Combine(result.OutputDir, "samples.png")}");
            return result.StoppedEarly ? ExitCodes.Stopped : ExitCodes.Ok;
        });
        return cmd;
    }

    private static string Describe(ToyBuildProgress p)
    {
        string steps = p.Steps > 0 ? $"{p.Step}/{p.Steps}" : $"{p.Step} (measuring speed)";
        string loss = double.IsNaN(p.Loss) ? "" : $" loss {p.Loss.ToString("F4", CultureInfo.InvariantCulture)}";
        string eta = p.Eta > TimeSpan.Zero ? $" ETA {p.Eta:hh\\:mm\\:ss}" : "";
        string rate = p.StepsPerSecond > 0 ? $" {p.StepsPerSecond.ToString("F2", CultureInfo.InvariantCulture)} it/s" : "";
        return $"{p.Stage} {steps}{rate}{eta}{loss}{(p.Message.Length > 0 ? " " + p.Message : "")}";
    }

    private static Command Render(CliContext cli)
    {
        var output = CliOptions.Out("folder for the pictures (NNNN.png, with NNNN.txt captions when --caption is given)");
        var prompt = new Option<string?>("--prompt", "-p") { Description = "what to draw, in the world's words (\"a big red circle on the left\"); unnamed parts are random" };
        var concept = new Option<string?>("--concept") { Description = $"draw a held-out concept instead: {string.Join(", ", ToyWorld.Concepts.Select(c => c.Name))}" };
        var caption = new Option<string?>("--caption") { Description = "caption to write beside each picture (e.g. \"a photo of sks shape\")" };
        var count = new Option<int>("--count", "-n") { Description = "number of pictures", DefaultValueFactory = _ => 6 };
        var seed = new Option<int>("--seed") { Description = "seed of the first picture (picture i uses seed + i)", DefaultValueFactory = _ => 1 };
        var size = new Option<int>("--size") { Description = "side in pixels", DefaultValueFactory = _ => ToyWorld.ImageSize };
        var cmd = new Command("render", "draw pictures of the toy world (a prompt, or a held-out concept to teach)") { output, prompt, concept, caption, count, seed, size };
        cmd.SetAction(r =>
        {
            var p = r.GetValue(prompt);
            var c = r.GetValue(concept) is { } name ? ToyWorld.Concept(name) : null;
            if ((p is null) == (c is null)) throw new SdLoraException("toy render: give either --prompt or --concept");
            if (r.GetValue(count) is < 1 or > 10000) throw new SdLoraException("--count: give 1 to 10000 pictures");
            if (r.GetValue(size) is < 16 or > 1024) throw new SdLoraException("--size: give 16 to 1024 pixels");
            var folder = OutputPath.CheckFolder(r.GetValue(output)!, what: "picture folder");
            var files = ToyDataset.Write(folder, c, p is null ? null : ToyPrompt.Parse(p), r.GetValue(count), r.GetValue(seed), r.GetValue(caption), r.GetValue(size));
            cli.Console.WriteLine($"{files.Count} pictures in {folder}");
            return ExitCodes.Ok;
        });
        return cmd;
    }

    private static Command Score(CliContext cli)
    {
        var images = new Argument<string[]>("images") { Description = "PNG/JPEG files or folders of them", Arity = ArgumentArity.OneOrMore };
        var prompt = new Option<string>("--prompt", "-p") { Description = "what the pictures should show, in the world's words", Required = true };
        var concept = new Option<string?>("--concept") { Description = "held-out concept that the word sks stands for in --prompt" };
        var cmd = new Command("score", "score pictures against a toy-world prompt (shape, colour, background; no model involved)") { images, prompt, concept };
        cmd.SetAction(r =>
        {
            var tokens = r.GetValue(concept) is { } name ? new Dictionary<string, ToyConcept> { ["sks"] = ToyWorld.Concept(name) } : null;
            var target = ToyPrompt.Parse(r.GetValue(prompt)!, tokens);
            var files = r.GetValue(images)!.SelectMany(a => Directory.Exists(a)
                ? Directory.GetFiles(a).Where(RgbImage.HasImageExtension).Order(StringComparer.Ordinal)
                : (IEnumerable<string>)[a]).ToList();
            if (files.Count == 0) throw new SdLoraException("toy score: no pictures found in the given folders");
            var scores = new List<double>();
            cli.Console.WriteLine($"target: {target}");
            foreach (var f in files)
            {
                var s = ToyScorer.Score(RgbImage.Load(f), target);
                scores.Add(s.Overall);
                cli.Console.WriteLine($"{f}: score {s.Overall:F3} (shape {Fmt(s.Shape)}, colour {Fmt(s.Colour)}, background {Fmt(s.Background)}); " +
                                      $"sees a {s.SeenColour ?? "-"} {s.SeenShape ?? "nothing"} on {s.SeenBackground}");
            }
            cli.Console.WriteLine($"mean score {scores.Average():F3} over {scores.Count} picture(s)");
            return ExitCodes.Ok;
        });
        return cmd;
    }

    private static string Fmt(double? v) => v is { } x ? x.ToString("F2", CultureInfo.InvariantCulture) : "-";
}
