using System.CommandLine;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Sampling;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora generate</c>: txt2img from the command line.</summary>
public static class GenerateCommand
{
    public static Command Create(CliContext cli)
    {
        var prompt = new Option<string>("--prompt", "-p") { Description = "the prompt (A1111 syntax: (word:1.2), [word], BREAK, <lora:NAME:W>)", Required = true };
        var negative = new Option<string>("--negative-prompt", "-n") { Description = "what to steer away from", DefaultValueFactory = _ => "" };
        var model = CliOptions.Model();
        var config = CliOptions.Config();
        var width = new Option<int>("--width", "-W") { Description = "image width (multiple of 8)", DefaultValueFactory = _ => 512 };
        var height = new Option<int>("--height", "-H") { Description = "image height (multiple of 8)", DefaultValueFactory = _ => 512 };
        var steps = new Option<int>("--steps") { Description = "sampling steps", DefaultValueFactory = _ => 20 };
        var sampler = new Option<string>("--sampler") { Description = "sampler: " + string.Join(", ", SamplerCatalog.Names) + " (or euler_a, dpmpp_2m_karras, ...)", DefaultValueFactory = _ => "Euler a" };
        var cfg = new Option<double>("--cfg") { Description = "classifier-free guidance scale", DefaultValueFactory = _ => 7.0 };
        var seed = new Option<long>("--seed") { Description = "seed (-1 = random; image i uses seed + i)", DefaultValueFactory = _ => -1 };
        var batchSize = new Option<int>("--batch-size") { Description = "images per batch", DefaultValueFactory = _ => 1 };
        var batchCount = new Option<int>("--batch-count") { Description = "number of batches", DefaultValueFactory = _ => 1 };
        var clipSkip = new Option<int>("--clip-skip") { Description = "use the n-th last CLIP layer (2 = A1111 'Clip skip: 2')", DefaultValueFactory = _ => 1 };
        var lora = new Option<string[]>("--lora") { Description = "LoRA file PATH[:WEIGHT] (repeatable)", AllowMultipleArgumentsPerToken = false, DefaultValueFactory = _ => [] };
        var loraDir = new Option<string>("--lora-dir") { Description = "where <lora:NAME:W> tags find NAME.safetensors", DefaultValueFactory = _ => Path.Combine("models", "lora") };
        var embeddingsDir = new Option<string>("--embeddings-dir")
        {
            Description = "textual-inversion embeddings: NAME.pt/.safetensors here is used wherever NAME is a word of the prompt or negative prompt",
            DefaultValueFactory = _ => Path.Combine("models", "embeddings"),
        };
        var initLatents = new Option<string?>("--init-latents") { Description = "safetensors file with tensor 'latents' [images,4,H/8,W/8] replacing the seeded noise" };
        var outDir = CliOptions.Out("output folder (images are numbered, never replaced)", Path.Combine("outputs", "txt2img"));
        var compute = new ComputeArguments();
        var vaeTiling = new Option<string>("--vae-tiling") { Description = "VAE decode in 512 px tiles: auto (above 768x768), on, off", DefaultValueFactory = _ => "auto" };
        var verbose = new Option<bool>("--verbose", "-v") { Description = "print the time of each phase (load, text encoding, sampling, VAE decode, PNG) and the peak memory" };

        var cmd = new Command("generate", "text to image (txt2img) with CFG, samplers and LoRAs; writes PNGs with A1111 parameters")
        {
            prompt, negative, model, config, width, height, steps, sampler, cfg, seed, batchSize, batchCount, clipSkip, lora, loraDir, embeddingsDir, initLatents, outDir,
            vaeTiling, verbose,
        };
        compute.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var options = new Txt2ImgOptions
            {
                Prompt = r.GetValue(prompt)!, NegativePrompt = r.GetValue(negative)!, Width = r.GetValue(width), Height = r.GetValue(height),
                Steps = r.GetValue(steps), Sampler = r.GetValue(sampler)!, CfgScale = r.GetValue(cfg), Seed = r.GetValue(seed),
                BatchSize = r.GetValue(batchSize), BatchCount = r.GetValue(batchCount), ClipSkip = r.GetValue(clipSkip),
                Loras = r.GetValue(lora)!.Select(LoraUse.Parse).ToList(), LoraDir = r.GetValue(loraDir)!, EmbeddingsDir = r.GetValue(embeddingsDir),
                OutputDir = r.GetValue(outDir),
                // One generation per process: the text encoder's weights are not needed once the prompts are encoded.
                ReleaseTextEncoderAfterEncoding = true,
                VaeTiling = r.GetValue(vaeTiling)!.Trim().ToLowerInvariant() switch
                {
                    "auto" => VaeTilingMode.Auto, "on" => VaeTilingMode.On, "off" => VaeTilingMode.Off,
                    var v => throw new SdLoraException($"--vae-tiling '{v}': use auto, on or off"),
                },
            };
            options.Validate();
            // Before the model loads and sampling starts: an unwritable --out must not cost the run.
            OutputPath.CheckFolder(options.OutputDir!, what: "image folder");
            foreach (var l in options.Loras)
                if (!File.Exists(l.Path)) throw new SdLoraException($"LoRA {l.Path} not found; check the path (or use <lora:NAME:WEIGHT> with NAME.safetensors in --lora-dir)");
            var modelPath = CliOptions.ResolveModel(r.GetValue(model), cli);
            var computeOptions = compute.Read(r, cli);
            var loadClock = System.Diagnostics.Stopwatch.StartNew();
            using var sd = cli.Status($"loading {modelPath}", () => StableDiffusionModel.Load(modelPath, r.GetValue(config), computeOptions));
            double loadSeconds = loadClock.Elapsed.TotalSeconds;
            long loadRss = ProcessMemoryInfo.ResidentBytes(), loadPeak = ProcessMemoryInfo.PeakResidentBytes();
            string? latentsPath = r.GetValue(initLatents);
            TorchSharp.torch.Tensor? latents = null;
            if (latentsPath is not null)
            {
                using var f = SafetensorsFile.Open(latentsPath);
                if (!f.Contains("latents")) throw new SdLoraException($"{latentsPath}: has no tensor named 'latents'; save the initial latents under that name");
                latents = f.Load("latents", TorchSharp.torch.ScalarType.Float32);
                options = options with { InitialLatents = latents };
            }
            var pipeline = new Txt2ImgPipeline(sd);
            var result = cli.Bar("generating", report =>
                pipeline.Generate(options, new SyncProgress<GenerationProgress>(p =>
                    report((p.Batch - 1) * p.Steps + p.Step, p.Batches * p.Steps, $"batch {p.Batch}/{p.Batches}")), cli.Cancellation));
            foreach (var w in result.Warnings) cli.Warning(w);
            foreach (var img in result.Images) cli.Console.MarkupLineInterpolated($"seed {img.Seed}: {img.Path}");
            if (result.Cancelled) cli.Console.MarkupLineInterpolated($"[yellow]stopped[/]: {result.Images.Count} finished image(s) kept");
            if (r.GetValue(verbose)) PhaseReport.Print(cli, [new PhaseTime("model load", loadSeconds, 1, loadRss, loadPeak), .. result.Phases ?? []], computeOptions, options.Steps * options.BatchCount);
            latents?.Dispose();
            return result.Cancelled ? ExitCodes.Stopped : ExitCodes.Ok;
        });
        return cmd;
    }
}
