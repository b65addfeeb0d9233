using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using SdLora.Models;

namespace SdLora.Toy;

/// <summary>The model card (README.md) and the machine-readable build record (toy_build.json) of a toy model.</summary>
public static class ToyModelCard
{
    private static string F(double v, string format = "F2") => v.ToString(format, CultureInfo.InvariantCulture);

    /// <summary>Shapes or colours whose pictures are right at least this often count as "draws it".</summary>
    public const double DrawsThreshold = 0.6;

    /// <summary>The command-line options of a build's settings that differ from the defaults (learning rates).</summary>
    private static string ExtraOptions(ToyBuildOptions o)
    {
        var d = new ToyBuildOptions();
        var s = new StringBuilder();
        if (o.UNetLearningRate != d.UNetLearningRate) s.Append(CultureInfo.InvariantCulture, $" --unet-lr {o.UNetLearningRate:G}");
        if (o.TextEncoderLearningRate != d.TextEncoderLearningRate) s.Append(CultureInfo.InvariantCulture, $" --text-encoder-lr {o.TextEncoderLearningRate:G}");
        s.Append(UNetBatchOption(o.UNetBatch));
        if (o.NoiseOffset != d.NoiseOffset) s.Append(CultureInfo.InvariantCulture, $" --noise-offset {o.NoiseOffset:G}");
        if (o.DebiasedEstimation) s.Append(" --debiased-loss");
        if (o.UNetFrom is { } from) s.Append($" --unet-from {from}");
        return s.ToString();
    }

    /// <summary><c> --unet-batch N</c> when <paramref name="batch"/> is not the default, else nothing.</summary>
    private static string UNetBatchOption(int batch) =>
        batch != new ToyBuildOptions().UNetBatch ? string.Create(CultureInfo.InvariantCulture, $" --unet-batch {batch}") : "";

    public static string Write(ToyBuildOptions o, ToyBuildResult r, string name)
    {
        var s = new StringBuilder();
        s.AppendLine($"# {name}: a toy Stable Diffusion 1.x model that draws coloured shapes");
        s.AppendLine();
        s.AppendLine("A diffusers-layout SD1.x model (UNet2DConditionModel, AutoencoderKL, CLIP text encoder, CLIP BPE tokenizer, DDIM");
        s.AppendLine("scheduler config) small enough to train on a CPU in under an hour, built from scratch by sdlora's own code on pictures");
        s.AppendLine("of a procedural world (`SdLora.Toy.ToyWorld`). It exists so the demo and the tests can see a concept being learned:");
        s.AppendLine("every loader, sampler, LoRA and training path of sdlora runs on it unchanged. It was trained on nothing but");
        s.AppendLine("generated pictures; no external data or weights went into it.");
        s.AppendLine();
        s.AppendLine("![samples](samples.png)");
        s.AppendLine();
        s.AppendLine("## How it was made");
        s.AppendLine();
        s.AppendLine("```bash");
        var continued = o.UNetFrom is { } baseFolder && o.VaeFrom == baseFolder ? ToyBuildRecord.Read(baseFolder) : null;
        if (continued is { } b)
        {
            // Trained further from a whole built model: its own build first, then this one on top of it.
            string baseName = name + "-base";
            s.AppendLine($"sdlora toy build --out {baseName} --seed {b.Seed} --vae-steps {b.VaeSteps} --unet-steps {b.UNetSteps}" +
                         (b.UNetBatch is { } batch ? UNetBatchOption(batch) : "") +
                         (b.NoiseOffset > 0 ? FormattableString.Invariant($" --noise-offset {b.NoiseOffset:G}") : " --noise-offset 0") + $" --threads {b.Threads ?? Threads}");
            s.AppendLine($"sdlora toy build --out {name} --seed {o.Seed} --vae-from {baseName} --unet-from {baseName} --unet-steps {r.UNetSteps}" +
                         ExtraOptions(o with { UNetFrom = null }) +
                         $" --threads {Threads}   # repeats this build");
            s.AppendLine("```");
            s.AppendLine();
            s.AppendLine($"(Two builds: the first trains the VAE and the UNet from scratch, {b.UNetSteps} UNet steps{(b.NoiseOffset > 0 ? "" : " without offset noise")};");
            s.AppendLine($"the second goes on from its UNet and text encoder for {r.UNetSteps} steps with offset noise {o.NoiseOffset:G3}, a fresh optimizer and");
            s.AppendLine($"learning-rate schedule. The first took {TimeSpan.FromSeconds(b.TotalSeconds):hh\\:mm\\:ss}, the second {r.Elapsed - r.VaeTime:hh\\:mm\\:ss}.)");
        }
        else if (o.VaeFrom is not null && r.VaeSteps > 0)
        {
            // Built in two runs (the VAE first, then the UNet with --vae-from): one run with both step counts is the same.
            s.AppendLine($"sdlora toy build --out {name} --seed {o.Seed} --vae-steps {r.VaeSteps} --unet-steps {r.UNetSteps}{ExtraOptions(o)} --threads {Threads}   # repeats this build");
            s.AppendLine("```");
            s.AppendLine();
            s.AppendLine($"(It was made in two runs, the VAE first and then `--vae-from` it with `--unet-steps {r.UNetSteps}`; the UNet stage trains on the");
            s.AppendLine("VAE as saved, in both cases, so one run with both step counts gives the same model on the same CPU and thread count.)");
        }
        else
        {
            s.AppendLine($"sdlora toy build --out {name} --seed {o.Seed} " + (o.VaeFrom is { } v ? $"--vae-from {v}" : $"--vae-steps {r.VaeSteps}") +
                         $" --unet-steps {r.UNetSteps}{ExtraOptions(o)} --threads {Threads}   # repeats this build");
            s.AppendLine("```");
        }
        s.AppendLine();
        if (o.VaeFrom is { } from && r.VaeSteps == 0)
            s.AppendLine($"1. **VAE**: reused from `{from}` (latent scaling factor {F(r.ScalingFactor, "F5")}).");
        else
        {
            s.AppendLine($"1. **VAE** ({ModuleSize(o.Vae)}): {r.VaeSteps} steps of batch {o.VaeBatch}, AdamW lr {o.VaeLearningRate:G3} (warm-up, cosine),");
            s.AppendLine($"   loss L1 + L2 reconstruction (the shape's pixels weighted {1 + o.VaeForegroundWeight:G3}x, the colour part of the error {1 + o.VaeChromaWeight:G3}x)");
            s.AppendLine($"   + {o.KlWeight:G3} x KL per pixel, on fresh world");
            s.AppendLine($"   pictures each step ({F(o.VaeHeldOutShare * 100, "F0")}% with held-out shapes or colours, so the VAE can draw what is taught later).");
            s.AppendLine($"   Final reconstruction loss {F(r.VaeLoss, "F4")}; latent scaling factor 1/std = {F(r.ScalingFactor, "F5")}. Time {r.VaeTime:hh\\:mm\\:ss}.");
        }
        if (r.VaeReconstruction.Images > 0)
        {
            var v = r.VaeReconstruction;
            s.AppendLine($"   Its reconstructions of {v.Images} fresh pictures (encode, decode, `ToyScorer` against each picture's full caption):");
            s.AppendLine($"   shape right {F(v.ShapeAccuracy * 100, "F0")}%, colour right {F(v.ColourAccuracy * 100, "F0")}%, background right {F(v.BackgroundAccuracy * 100, "F0")}% " +
                         $"(score {F(v.Overall)}): what the UNet can draw at best.");
        }
        s.AppendLine($"2. **UNet + text encoder** ({ModuleSize(o.UNet)}, {ModuleSize(o.TextEncoder)}): {r.UNetSteps} steps of batch {o.UNetBatch} on");
        s.AppendLine($"   the VAE latents of {o.LatentImages} base scenes, a caption drawn afresh for each use ({F(o.CaptionDropout * 100, "F0")}% empty for");
        if (continued is { } cb)
            s.AppendLine($"   Started from the UNet and text encoder of the first build ({cb.UNetSteps} steps{(cb.NoiseOffset > 0 ? FormattableString.Invariant($", offset noise {cb.NoiseOffset:G3}") : ", no offset noise")}).");
        else if (o.UNetFrom is { } unetFrom) s.AppendLine($"   Started from the UNet and text encoder of `{unetFrom}`.");
        s.AppendLine($"   classifier-free guidance); epsilon prediction on SD1.x's noise schedule, offset noise {o.NoiseOffset:G3} (so the prompt, not");
        s.AppendLine($"   the starting noise, sets the background), min-SNR-{o.MinSnrGamma:G3}{(o.DebiasedEstimation ? " and debiased-estimation" : "")} weighting, AdamW");
        s.AppendLine($"   lr {o.UNetLearningRate:G3} (text encoder {(o.TrainTextEncoder ? o.TextEncoderLearningRate.ToString("G3", CultureInfo.InvariantCulture) : "frozen")}), " +
                     $"EMA {o.EmaDecay:G4} of the weights saved. Final loss {F(r.UNetLoss, "F4")}. Time {r.UNetTime:hh\\:mm\\:ss}{(r.StoppedEarly ? " (stopped early)" : "")}.");
        s.AppendLine($"3. Saved as {(o.SaveDType == TorchSharp.torch.ScalarType.Float16 ? "fp16" : "fp32")} safetensors; whole build {(continued is { } tb ? TimeSpan.FromSeconds(tb.TotalSeconds) + r.Elapsed - r.VaeTime : r.Elapsed):hh\\:mm\\:ss} on {Environment.ProcessorCount} CPU core(s).");
        s.AppendLine();
        s.AppendLine($"Seed {o.Seed} drives everything: weight init, the pictures of each step, captions, noise and timesteps.");
        s.AppendLine();
        s.AppendLine("## The world and its prompts");
        s.AppendLine();
        s.AppendLine($"64x64 pictures of one flat shape on a plain background. Shapes: {string.Join(", ", ToyWorld.Shapes)}. Colours:");
        s.AppendLine($"{string.Join(", ", ToyWorld.Colours.Select(c => c.Name))}. Backgrounds: {string.Join(", ", ToyWorld.Backgrounds.Select(c => c.Name))}.");
        s.AppendLine($"Sizes: {string.Join(", ", ToyWorld.Sizes)}. Places: {string.Join(", ", ToyWorld.Positions.Select(p => p.Phrase))}.");
        s.AppendLine("Captions name some or all of it, e.g. `a big red circle on the left on a black background`, `a photo of a yellow shape`,");
        s.AppendLine($"`a star at the top`; `{ToyWorld.ClassWord}` stands for any shape (the class word). Use {ToyEvaluation.Sampler}, {ToyEvaluation.Steps} steps, CFG {ToyEvaluation.CfgScale}, 64x64.");
        s.AppendLine();
        s.AppendLine("**Held out** (never named in the UNet's captions; the VAE saw them): " +
                     string.Join("; ", ToyWorld.Concepts.Select(c => $"`{c.Name}` (a {c.ColourName} {c.Shape})")) +
                     $". The demo teaches `{ToyWorld.DemoConcept.Name}` as `a photo of sks {ToyWorld.ClassWord}`.");
        s.AppendLine();
        s.AppendLine("## Measured");
        s.AppendLine();
        s.AppendLine($"Every base shape in every colour (`a red circle on a black background`, ...; {r.Evaluation.Images / Math.Max(1, o.EvaluationSeeds)} prompts x {o.EvaluationSeeds} seeds from 1000),");
        s.AppendLine("scored by `ToyScorer` against the renderer's own picture of the prompt (no model in the measurement): shape = IoU of the");
        s.AppendLine("foreground mask with the rendered shape after centring and scaling both to the same area; colour = overlap of the foreground's");
        s.AppendLine("palette histogram; background = share of border pixels in the asked colour; accuracy = how often the best-matching");
        s.AppendLine("shape/colour/background is the asked one. The renderer's own pictures score about 0.9-1.0.");
        s.AppendLine();
        s.AppendLine("| prompts | images | score | shape | colour | background | shape acc. | colour acc. | background acc. |");
        s.AppendLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        s.AppendLine(Row("all", r.Evaluation));
        foreach (var (shape, sum) in r.PerShape) s.AppendLine(Row(shape, sum));
        foreach (var (colour, sum) in r.PerColour) s.AppendLine(Row(colour, sum));
        s.AppendLine();
        s.AppendLine("## What it can and cannot draw");
        s.AppendLine();
        var goodShapes = r.PerShape.Where(kv => kv.Value.ShapeAccuracy >= DrawsThreshold).Select(kv => kv.Key).ToList();
        var weakShapes = r.PerShape.Where(kv => kv.Value.ShapeAccuracy < DrawsThreshold).Select(kv => kv.Key).ToList();
        var goodColours = r.PerColour.Where(kv => kv.Value.ColourAccuracy >= DrawsThreshold).Select(kv => kv.Key).ToList();
        var weakColours = r.PerColour.Where(kv => kv.Value.ColourAccuracy < DrawsThreshold).Select(kv => kv.Key).ToList();
        s.AppendLine($"- Shapes right at least {F(DrawsThreshold * 100, "F0")}% of the time: {List(goodShapes)}; less often: {List(weakShapes)}.");
        s.AppendLine($"- Colours right at least {F(DrawsThreshold * 100, "F0")}% of the time: {List(goodColours)}; less often: {List(weakColours)}.");
        s.AppendLine($"- Backgrounds right {F(r.Evaluation.BackgroundAccuracy * 100, "F0")}% of the time.");
        int latent = ToyWorld.ImageSize / o.Vae.DownsampleFactor;
        s.AppendLine($"- It draws one shape per picture at 64x64 only; edges are soft (a {latent}x{latent}x4 latent). It knows nothing outside the world above:");
        s.AppendLine("  other words are noise to it, and the held-out shapes and colours do not come out until taught.");
        return s.ToString();
    }

    /// <summary>Torch threads of the build (the card's command repeats them: results differ in the last bits with the count).</summary>
    private static int Threads => TorchSharp.torch.get_num_threads();

    private static string List(IReadOnlyCollection<string> items) => items.Count == 0 ? "none" : string.Join(", ", items);

    private static string Row(string label, ToySummary s) =>
        $"| {label} | {s.Images} | {F(s.Overall)} | {F(s.Shape)} | {F(s.Colour)} | {F(s.Background)} | {F(s.ShapeAccuracy)} | {F(s.ColourAccuracy)} | {F(s.BackgroundAccuracy)} |";

    private static string ModuleSize(object config) => config switch
    {
        AutoencoderKLConfig v => $"channels {string.Join("/", v.Channels)}, {v.LayersPerBlock} layer(s) per block, 4 latent channels",
        UNetConfig u => $"channels {string.Join("/", u.Channels)}, {u.LayersPerBlock} layer(s) per block, cross-attention dim {u.CrossAttentionDim}",
        ClipTextConfig t => $"text encoder {t.NumHiddenLayers} layers of width {t.HiddenSize}",
        _ => config.ToString() ?? "",
    };

    public static string BuildJson(ToyBuildOptions o, ToyBuildResult r) => JsonSerializer.Serialize(new
    {
        seed = o.Seed,
        vae_steps = r.VaeSteps,
        unet_steps = r.UNetSteps,
        vae_batch = o.VaeBatch,
        unet_batch = o.UNetBatch,
        vae_learning_rate = o.VaeLearningRate,
        unet_learning_rate = o.UNetLearningRate,
        text_encoder_learning_rate = o.TrainTextEncoder ? o.TextEncoderLearningRate : 0,
        kl_weight = o.KlWeight,
        latent_images = o.LatentImages,
        caption_dropout = o.CaptionDropout,
        min_snr_gamma = o.MinSnrGamma,
        noise_offset = o.NoiseOffset,
        debiased_estimation = o.DebiasedEstimation,
        unet_from = o.UNetFrom,
        threads = Threads,
        ema_decay = o.EmaDecay,
        scaling_factor = r.ScalingFactor,
        vae_reconstruction = r.VaeReconstruction,
        vae_loss = r.VaeLoss,
        unet_loss = r.UNetLoss,
        vae_seconds = r.VaeTime.TotalSeconds,
        unet_seconds = r.UNetTime.TotalSeconds,
        total_seconds = r.Elapsed.TotalSeconds,
        stopped_early = r.StoppedEarly,
        sampler = ToyEvaluation.Sampler,
        sampling_steps = ToyEvaluation.Steps,
        cfg_scale = ToyEvaluation.CfgScale,
        evaluation = r.Evaluation,
        per_shape = r.PerShape,
        per_colour = r.PerColour,
    }, new JsonSerializerOptions { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals }) + "\n";
}

/// <summary>
/// What a toy model folder's build record (<see cref="FileName"/>, written by <see cref="ToyModelCard.BuildJson"/> or by a
/// build's VAE stage) says about how it was made; a number it does not hold reads as 0.
/// </summary>
internal sealed record ToyBuildRecord(long Seed, int VaeSteps, double VaeLoss, double VaeSeconds, int UNetSteps, double NoiseOffset, int? Threads,
    double TotalSeconds, int? UNetBatch = null)
{
    public const string FileName = "toy_build.json";

    /// <summary>The record in <paramref name="folder"/>, or null when it has none.</summary>
    public static ToyBuildRecord? Read(string folder)
    {
        var path = Path.Combine(folder, FileName);
        if (!File.Exists(path)) return null;
        using var json = JsonDocument.Parse(File.ReadAllText(path));
        var r = json.RootElement;
        // BuildJson writes a NaN (a loss not measured) as the string "NaN".
        double Number(string key) => !r.TryGetProperty(key, out var v) ? 0 : v.ValueKind switch
        {
            JsonValueKind.Number => v.GetDouble(),
            JsonValueKind.String when double.TryParse(v.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
            _ => 0,
        };
        return new ToyBuildRecord(r.GetProperty("seed").GetInt64(), (int)Number("vae_steps"), Number("vae_loss"), Number("vae_seconds"),
            (int)Number("unet_steps"), Number("noise_offset"),
            r.TryGetProperty("threads", out var t) && t.ValueKind == JsonValueKind.Number ? t.GetInt32() : null, Number("total_seconds"),
            r.TryGetProperty("unet_batch", out var batch) && batch.ValueKind == JsonValueKind.Number ? batch.GetInt32() : null);
    }
}
