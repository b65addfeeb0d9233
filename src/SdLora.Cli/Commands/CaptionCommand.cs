using System.CommandLine;
using SdLora.Captioning;
using SdLora.IO;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora caption DIR</c>: writes a BLIP caption next to every training image.</summary>
public static class CaptionCommand
{
    public static Command Create(CliContext cli)
    {
        var dir = new Argument<string>("DIR") { Description = "training image folder (plain, or kohya's 'N_identifier class' sub-folders)" };
        var model = new Option<string?>("--model") { Description = $"BLIP model folder (Hugging Face layout); default models/blip or ${BlipCaptioner.ModelEnvironmentVariable}" };
        var ext = new Option<string>("--ext") { Description = "caption file extension: .txt or .caption", DefaultValueFactory = _ => ".txt" };
        var prefix = new Option<string>("--prefix") { Description = "text put before every caption, e.g. \"sks dog, \"", DefaultValueFactory = _ => "" };
        var overwrite = new Option<bool>("--overwrite") { Description = "replace existing caption files (default: keep them)" };
        var batchSize = new Option<int>("--batch-size") { Description = "images captioned together", DefaultValueFactory = _ => 1 };
        var numBeams = new Option<int>("--num-beams") { Description = "beam search width (1 = greedy)", DefaultValueFactory = _ => 1 };
        var minLength = new Option<int>("--min-length") { Description = "minimum tokens, counting [DEC] and the prompt", DefaultValueFactory = _ => 5 };
        var maxLength = new Option<int>("--max-length") { Description = "maximum tokens, counting [DEC] and the prompt", DefaultValueFactory = _ => 75 };
        var repetition = new Option<double>("--repetition-penalty") { Description = "penalty on tokens already present (1.0 = off; kohya samples with 1.1)", DefaultValueFactory = _ => 1.0 };
        var topP = new Option<double?>("--top-p") { Description = "nucleus sampling with this top-p (and top-k 50) instead of greedy/beam search; kohya's default is 0.9" };
        var seed = new Option<long>("--seed") { Description = "seed for sampling", DefaultValueFactory = _ => 0 };
        var prompt = new Option<string>("--prompt") { Description = "conditional prompt, stripped from the written caption (\"\" = unconditional)", DefaultValueFactory = _ => "a picture of " };
        var legacyBeams = new Option<bool>("--legacy-beam-length") { Description = "beam search length rule of transformers <= 4.35 (whole sequence) instead of generated tokens" };
        var compute = new ComputeArguments();

        var command = new Command("caption", "write a BLIP caption file next to every image of a training folder");
        command.Arguments.Add(dir);
        foreach (var o in new Option[] { model, ext, prefix, overwrite, batchSize, numBeams, minLength, maxLength, repetition, topP, seed, prompt, legacyBeams })
            command.Options.Add(o);
        compute.AddTo(command);

        command.SetAction(parse =>
        {
            var ui = cli.Console;
            var folder = parse.GetValue(dir)!;
            var datasetOptions = new DatasetCaptionOptions
            {
                Extension = DatasetCaptioner.NormalizeExtension(parse.GetValue(ext)!),
                Prefix = parse.GetValue(prefix) ?? "",
                Overwrite = parse.GetValue(overwrite),
                BatchSize = parse.GetValue(batchSize),
            };
            double? p = parse.GetValue(topP);
            var generation = new BlipGenerationOptions
            {
                NumBeams = parse.GetValue(numBeams),
                MinLength = parse.GetValue(minLength),
                MaxLength = parse.GetValue(maxLength),
                RepetitionPenalty = parse.GetValue(repetition),
                DoSample = p is not null,
                TopP = p ?? 1.0,
                LengthRule = parse.GetValue(legacyBeams) ? BeamLengthRule.WholeSequence : BeamLengthRule.GeneratedTokens,
            };
            generation.Validate();
            var captionOptions = new BlipCaptionOptions { Prompt = parse.GetValue(prompt) ?? "", Generation = generation, Seed = parse.GetValue(seed) };
            var modelDir = parse.GetValue(model) ?? BlipCaptioner.DefaultModelFolder();
            var images = DatasetCaptioner.FindImages(folder);
            // Before BLIP loads: nothing to caption, or nowhere to write captions, is the user's to fix now.
            if (images.Count == 0)
                throw new SdLoraException($"{folder}: holds no images ({string.Join(", ", SdLora.Imaging.RgbImage.SupportedExtensions)}); pass the folder with your training photos");
            foreach (var imageFolder in images.Select(Path.GetDirectoryName).Distinct())
                OutputPath.EnsureWritableFolder(imageFolder!, "caption files");
            BlipCaptioner.EnsureModelFolder(modelDir);
            var computeOptions = compute.Read(parse, cli);

            ui.MarkupLine($"loading BLIP from [blue]{Markup.Escape(modelDir)}[/]; {images.Count} images in {Markup.Escape(folder)}");
            using var blip = BlipCaptioner.Load(modelDir, computeOptions);
            int positions = blip.Model.Config.Text.MaxPositionEmbeddings;
            if (generation.MaxLength > positions)
            {
                // Small BLIP variants have fewer text positions than the default length; an explicit --max-length is the user's to fix.
                if (parse.GetResult(maxLength) is { Implicit: false })
                    throw new SdLoraException($"--max-length {generation.MaxLength}: this BLIP model has {positions} text positions; use at most {positions}");
                cli.Note($"this BLIP model has {positions} text positions: captions are at most {positions} tokens");
                captionOptions = captionOptions with { Generation = generation with { MaxLength = positions, MinLength = Math.Min(generation.MinLength, positions) } };
            }
            var summary = cli.Bar("captioning", report => DatasetCaptioner.Run(folder, blip, captionOptions, datasetOptions,
                new SyncProgress<CaptionProgress>(r => report(r.Done, r.Total, "")), cli.Cancellation));
            foreach (var failed in summary.Files.Where(f => f.Outcome == CaptionOutcome.Failed))
                ui.MarkupLine($"[yellow]skipped[/] {Markup.Escape(failed.Error ?? failed.ImagePath)}");
            ui.MarkupLine($"{summary.Captioned} captioned, {summary.Kept} kept (existing captions; --overwrite replaces them), {summary.Failed} failed");
            return summary.Failed > 0 && summary.Captioned + summary.Kept == 0 ? ExitCodes.Failed : ExitCodes.Ok;
        });
        return command;
    }
}
