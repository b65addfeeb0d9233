using System.CommandLine;
using SdLora.Benchmarks;
using SdLora.Training;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>sdlora bench workflow</c>: the seed recipe end to end (4 photos, prior preservation with 8 generated class images,
/// 70 LoRA steps at 512²) on the full-size random-weight checkpoint, each phase timed by the trainer, and each phase
/// scaled to the full recipe by its work when run smaller (<c>--size</c>, <c>--steps</c>, <c>--class-images</c>).
/// </summary>
public static class BenchWorkflowCommand
{
    public static Command Create(CliContext cli, string name = "workflow")
    {
        var dir = new Option<string?>("--dir") { Description = "folder of the synthetic 2 GB SD1.5 checkpoint (default: the bench folder in sdlora's user cache; written once)" };
        var work = new Option<string?>("--work") { Description = "scratch folder for photos, class images and the run (default: a new temp folder, deleted afterwards)" };
        var dtype = BenchHost.DTypeOption();
        var size = new Option<int>("--size") { Description = "training and class-image resolution (the recipe: 512)", DefaultValueFactory = _ => WorkflowBenchmark.RecipeSize };
        var steps = new Option<int>("--steps") { Description = "LoRA training steps (the recipe: 70)", DefaultValueFactory = _ => WorkflowBenchmark.RecipeSteps };
        var classImages = new Option<int>("--class-images") { Description = "class images to generate (the recipe: 8)", DefaultValueFactory = _ => WorkflowBenchmark.RecipeClassImages };
        var classSteps = new Option<int?>("--class-steps") { Description = "sampling steps per class image (default: the trainer's, 12 on the CPU)" };
        var classSampler = new Option<string?>("--class-sampler") { Description = "class-image sampler (default: the trainer's, DPM++ 2M Karras on the CPU)" };
        var checkpointing = new Option<bool>("--gradient-checkpointing") { Description = "train with gradient checkpointing" };
        var json = BenchJson.Option();
        var command = new Command(name, "time the seed workflow (4 photos, 8 class images, 70 steps at 512²) end to end on a full-size SD1.5 checkpoint with random weights")
        {
            dir, work, dtype, size, steps, classImages, classSteps, classSampler, checkpointing, json,
        };
        command.SetAction(parse =>
        {
            BenchHost.Start();
            bool asJson = parse.GetValue(json);
            var log = BenchJson.Progress(cli, asJson);
            var checkpoint = LoadBenchmark.EnsureSd15Checkpoint(parse.GetValue(dir) ?? Path.Combine(UserCache.Folder, "bench"), log, cli.Cancellation);
            var photos = Path.Combine(AppContext.BaseDirectory, "assets", "dreambooth", "dog");
            var workDir = parse.GetValue(work) ?? Path.Combine(Path.GetTempPath(), "sdlora-bench-workflow-" + Guid.NewGuid().ToString("N")[..8]);
            var o = new WorkflowBenchmarkOptions(checkpoint, photos, workDir, parse.GetValue(dtype)!, parse.GetValue(size), Math.Max(1, parse.GetValue(steps)),
                WorkflowBenchmark.RecipePhotos, Math.Max(0, parse.GetValue(classImages)), parse.GetValue(classSteps), parse.GetValue(classSampler),
                parse.GetValue(checkpointing));
            var last = DateTime.MinValue;
            var progress = new SyncProgress<TrainingProgress>(p =>
            {
                if (p.Phase == TrainingPhase.Info) { log.Report(p.Message); return; }
                if (p.Done != p.Total && DateTime.UtcNow - last < TimeSpan.FromSeconds(10)) return;
                last = DateTime.UtcNow;
                log.Report($"{p.Phase} {p.Done}/{p.Total} {p.Message}{(p.Eta > TimeSpan.Zero ? $" ETA {p.Eta:hh\\:mm\\:ss}" : "")}");
            });
            WorkflowBenchmarkResult r;
            try { r = WorkflowBenchmark.Run(o, () => CliCompute.Probe(cli.Cancellation).Result, progress, cli.Cancellation); }
            finally
            {
                if (parse.GetValue(work) is null && Directory.Exists(workDir)) Directory.Delete(workDir, recursive: true);
            }
            bool isRecipe = o.Size == WorkflowBenchmark.RecipeSize && o.Steps == WorkflowBenchmark.RecipeSteps && o.ClassImages == WorkflowBenchmark.RecipeClassImages;
            if (asJson)
            {
                var training = r.Phases.FirstOrDefault(p => p.Phase == "training");
                BenchJson.Write(parse, new()
                {
                    ["benchmark"] = "workflow",
                    ["what"] = $"DreamBooth LoRA end to end on a full-size SD1.5 checkpoint (random weights): {o.Photos} photos, {r.ClassImagesGenerated} class images generated ({r.Config.EffectiveClassImageSampler}, {r.Config.EffectiveClassImageSteps} steps), {r.TrainSteps} steps at {o.Size}x{o.Size}, rank 16",
                    ["size"] = o.Size,
                    ["train_steps"] = r.TrainSteps,
                    ["class_images"] = r.ClassImagesGenerated,
                    ["class_image_steps"] = r.Config.EffectiveClassImageSteps,
                    ["class_image_sampler"] = r.Config.EffectiveClassImageSampler,
                    ["seconds"] = r.WallSeconds,
                    ["seconds_per_step"] = training is null ? null : training.Seconds / Math.Max(1, training.Count),
                    ["recipe_seconds"] = r.Extrapolated,
                    ["recipe_is_measured"] = isRecipe,
                    ["peak_rss_bytes"] = r.PeakRssBytes,
                    ["gflop"] = null,
                    ["efficiency"] = null,
                    ["phases"] = r.Phases.Select(p => new Dictionary<string, object?>
                    {
                        ["phase"] = p.Phase, ["seconds"] = p.Seconds, ["count"] = p.Count, ["recipe_seconds"] = p.RecipeSeconds,
                    }).ToList(),
                }, BenchJson.Precision(r.Compute, o.DType));
                return 0;
            }
            var table = new Table().AddColumns("phase", "seconds", "count", isRecipe ? "" : "scaled to the recipe");
            foreach (var p in r.Phases)
                table.AddRow(Markup.Escape(p.Phase), $"{p.Seconds:F1}", p.Count.ToString(), isRecipe ? "" : WorkflowEstimate.Format(p.RecipeSeconds));
            table.AddRow("total", $"{r.MeasuredSeconds:F1} ({WorkflowEstimate.Format(r.WallSeconds)} wall)", "", isRecipe ? "" : WorkflowEstimate.Format(r.Extrapolated));
            cli.Console.Write(table);
            cli.Console.MarkupLineInterpolated($"[grey]{r.Compute.Describe()}, {r.Threads} peak RSS {r.PeakRssBytes / 1073741824.0:F2} GiB; {r.ClassImagesGenerated} class images ({r.Config.EffectiveClassImageSampler}, {r.Config.EffectiveClassImageSteps} steps), {r.TrainSteps} steps at {o.Size}x{o.Size}[/]");
            return 0;
        });
        return command;
    }
}
