using SdLora.Imaging;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Models;
using SdLora.Sampling;
using SdLora.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Pipelines;

/// <summary>What to generate. Defaults follow AUTOMATIC1111's txt2img tab.</summary>
public sealed record Txt2ImgOptions
{
    public string Prompt { get; init; } = "";
    public string NegativePrompt { get; init; } = "";
    public int Width { get; init; } = 512;
    public int Height { get; init; } = 512;
    public int Steps { get; init; } = 20;
    public string Sampler { get; init; } = "Euler a";
    public double CfgScale { get; init; } = 7;
    /// <summary>-1 draws a random seed; image i of the run uses <c>seed + i</c>.</summary>
    public long Seed { get; init; } = -1;
    public int BatchSize { get; init; } = 1;
    public int BatchCount { get; init; } = 1;
    public int ClipSkip { get; init; } = 1;
    /// <summary>LoRAs given explicitly (<c>--lora</c>), on top of the prompt's <c>&lt;lora:..&gt;</c> tags.</summary>
    public IReadOnlyList<LoraUse> Loras { get; init; } = [];
    /// <summary>Where <c>&lt;lora:NAME:W&gt;</c> finds <c>NAME.safetensors</c>.</summary>
    public string LoraDir { get; init; } = Path.Combine("models", "lora");
    /// <summary>Textual-inversion embeddings: a file NAME.pt/.safetensors here is used wherever NAME is a word of the prompt or negative prompt (A1111).</summary>
    public string? EmbeddingsDir { get; init; } = Path.Combine("models", "embeddings");
    /// <summary>Embeddings held in memory (a training run's), used like the files in <see cref="EmbeddingsDir"/> and before them.</summary>
    public IReadOnlyList<TextualInversionEmbedding> Embeddings { get; init; } = [];
    /// <summary>Initial latents <c>[images, 4, H/8, W/8]</c> replacing the seeded noise (to compare with other implementations).</summary>
    public Tensor? InitialLatents { get; init; }
    /// <summary>Folder for the PNGs; null keeps images in memory only.</summary>
    public string? OutputDir { get; init; }
    /// <summary>VAE decode in tiles: auto (above 768x768 pixels, where untiled activations pass ~2 GiB), on or off.</summary>
    public VaeTilingMode VaeTiling { get; init; } = VaeTilingMode.Auto;
    /// <summary>
    /// Free the model's text encoder once the prompts are encoded (<see cref="StableDiffusionModel.ReleaseTextEncoder"/>):
    /// for a one-shot generation (the CLI), whose peak memory then holds only the UNet and the VAE. The model cannot
    /// encode prompts afterwards.
    /// </summary>
    public bool ReleaseTextEncoderAfterEncoding { get; init; }

    public void Validate()
    {
        if (Width % 8 != 0 || Height % 8 != 0 || Width < 64 || Height < 64)
            throw new SdLoraException($"size {Width}x{Height} is not usable: width and height must be multiples of 8 and at least 64 (e.g. 512x512)") { Setting = Width % 8 != 0 || Width < 64 ? "width" : "height" };
        // Messages name the setting, not a command-line flag: the web forms and the A1111 API show them too.
        if (Steps < 1 || Steps > 1000) throw new SdLoraException($"steps {Steps} is out of range: use 1 to 1000 (20-30 is typical)") { Setting = "steps" };
        if (CfgScale < 0 || double.IsNaN(CfgScale)) throw new SdLoraException($"CFG scale {CfgScale} is not usable: use a value >= 0 (7 is typical)") { Setting = "cfg-scale" };
        if (BatchSize < 1) throw new SdLoraException($"batch size {BatchSize}: must be at least 1") { Setting = "batch-size" };
        if (BatchCount < 1) throw new SdLoraException($"batch count {BatchCount}: must be at least 1") { Setting = "batch-count" };
        if (ClipSkip < 1 || ClipSkip > 12) throw new SdLoraException($"clip skip {ClipSkip} is out of range: use 1 (none) to 12; 2 is common for anime models") { Setting = "clip-skip" };
        SamplerCatalog.Get(Sampler);
    }
}

/// <summary>Whether the VAE decodes in tiles (<see cref="Models.VaeTiling"/>).</summary>
public enum VaeTilingMode { Auto, On, Off }

public sealed record GeneratedImage(RgbImage Image, long Seed, GenerationParameters Parameters, string? Path);

/// <summary>Progress of a generation run: model call <see cref="Step"/> of <see cref="Steps"/> for batch <see cref="Batch"/> of <see cref="Batches"/>.</summary>
public readonly record struct GenerationProgress(int Batch, int Batches, int Step, int Steps);

/// <param name="Phases">Where the time went: LoRA attach, text encoding, sampling, VAE decode, PNG writing.</param>
public sealed record GenerationResult(IReadOnlyList<GeneratedImage> Images, bool Cancelled, IReadOnlyList<string> Warnings,
    IReadOnlyList<PhaseTime>? Phases = null);

/// <summary>
/// Text to image: prompt -> CLIP conditioning -> denoising with classifier-free guidance -> VAE decode -> PNG.
/// LoRAs are attached for the call only, so the base model is unchanged afterwards.
/// </summary>
public sealed class Txt2ImgPipeline(StableDiffusionModel model)
{
    public StableDiffusionModel Model => model;

    public GenerationResult Generate(Txt2ImgOptions o, IProgress<GenerationProgress>? progress = null, CancellationToken ct = default)
    {
        o.Validate();
        if (model.TextEncoderReleased)
            throw new SdLoraException($"model {model.Name}: its text encoder was released after an earlier generation (ReleaseTextEncoderAfterEncoding); load the model again to generate more");
        var sampler = SamplerCatalog.Get(o.Sampler);
        int total = o.BatchSize * o.BatchCount;
        int f = model.Vae.Config.DownsampleFactor, lh = o.Height / f, lw = o.Width / f;
        if (o.InitialLatents is { } init && !init.shape.SequenceEqual(new long[] { total, 4, lh, lw }))
            throw new SdLoraException($"--init-latents has shape [{string.Join(",", init.shape)}] but this run needs [{total},4,{lh},{lw}] (batch-size x batch-count images at {o.Width}x{o.Height})");
        long seed = o.Seed >= 0 ? o.Seed : Random.Shared.NextInt64(0, uint.MaxValue);

        var tags = PromptParser.Parse(o.Prompt).Loras;
        var loraUses = o.Loras.Concat(tags.Select(t => new LoraUse(LoraFolder.Resolve(t.Name, o.LoraDir), t.TextEncoderWeight, t.UNetWeightOverride))).ToList();
        // Words trained with a LoRA (pivotal tuning) or bundled in it are usable while it is in use; the caller's own win.
        using var loraWords = LoraEmbeddings.ReadAll(loraUses.Select(u => u.Path));
        using var embeddingLibrary = new EmbeddingLibrary(o.EmbeddingsDir, loraWords.Embeddings.Concat(o.Embeddings));
        var embeddings = new PromptEmbeddings(embeddingLibrary, model.Tokenizer, model.TextEncoder.Config.VocabSize, model.TextEncoder.Config.HiddenSize);
        var encoder = new PromptEncoder(model.Tokenizer, model.TextEncoder) { Embeddings = embeddings };

        var images = new List<GeneratedImage>();
        var warnings = new List<string>();
        var timer = new PhaseTimer();
        using var loras = timer.Time("LoRA attach", () => LoraSet.Attach(model, loraUses, warnings));
        using var scope = torch.NewDisposeScope();
        Tensor cond = null!, uncond = null!;
        timer.Time("text encoding", () =>
        {
            using var noGrad = torch.no_grad();
            using var c = encoder.Encode(o.Prompt, o.ClipSkip);
            using var u = encoder.Encode(o.NegativePrompt, o.ClipSkip);
            (cond, uncond) = encoder.PadToSameLength(c.Conditioning, u.Conditioning, o.ClipSkip);
        });
        if (o.ReleaseTextEncoderAfterEncoding) model.ReleaseTextEncoder();
        var parametersBase = new GenerationParameters
        {
            Prompt = o.Prompt, NegativePrompt = o.NegativePrompt, Steps = o.Steps, Sampler = sampler.Name, CfgScale = o.CfgScale,
            Width = o.Width, Height = o.Height, ModelHash = model.ShortHash, Model = model.Name, ClipSkip = o.ClipSkip,
            LoraHashes = loras.Hashes, TextualInversionHashes = embeddings.Hashes, Extra = [new("Version", "sdlora " + typeof(Txt2ImgPipeline).Assembly.GetName().Version?.ToString(3))],
        };

        try
        {
            for (int b = 0; b < o.BatchCount; b++)
            {
                using var batchScope = torch.NewDisposeScope();
                var seeds = Enumerable.Range(0, o.BatchSize).Select(i => seed + b * o.BatchSize + i).ToArray();
                var noise = o.InitialLatents is { } il ? il.narrow(0, b * o.BatchSize, o.BatchSize).to(ScalarType.Float32)
                    : torch.cat(seeds.Select(s => InitialNoise(s, lh, lw)).ToList(), 0);
                int batch = b;
                var prog = progress is null ? null : new SyncProgress<SamplingProgress>(p => progress.Report(new GenerationProgress(batch + 1, o.BatchCount, p.Step, p.Total)));
                using var ancestral = new SeededNoise(seeds[0]);
                var latents = timer.Time("sampling", () => Sample(sampler, noise, cond, uncond, o.CfgScale, o.Steps, ancestral, prog, ct));
                HeapTrim.ReleaseFreedMemory();
                var decoded = timer.Time("VAE decode", () => Decode(latents, o.VaeTiling));
                timer.Time(o.OutputDir is null ? "image conversion" : "PNG writing", () =>
                {
                    for (int i = 0; i < o.BatchSize; i++)
                    {
                        var img = RgbImage.FromTensor01(decoded[i]);
                        var p = parametersBase with { Seed = seeds[i] };
                        string? path = null;
                        if (o.OutputDir is { } dir)
                        {
                            path = OutputNaming.Reserve(dir, seeds[i]);
                            try { PngFile.Write(path, img, new Dictionary<string, string> { ["parameters"] = p.ToInfotext() }); }
                            catch { File.Delete(path); throw; }
                        }
                        images.Add(new GeneratedImage(img, seeds[i], p, path));
                    }
                });
            }
        }
        catch (OperationCanceledException)
        {
            return new GenerationResult(images, true, warnings, timer.Phases);
        }
        return new GenerationResult(images, false, warnings, timer.Phases);
    }

    /// <summary>The seeded N(0,1) starting latents of one image: generated on the CPU in fp32, so a seed gives the same image on every device.</summary>
    public static Tensor InitialNoise(long seed, int latentHeight, int latentWidth)
    {
        using var g = new Generator((ulong)seed, CPU);
        return torch.randn([1, 4, latentHeight, latentWidth], ScalarType.Float32, CPU, generator: g);
    }

    /// <summary>
    /// The denoising loop with classifier-free guidance: the UNet sees the batch <c>[negative, positive]</c> and
    /// the guided prediction is <c>u + cfg (c - u)</c>. Returns final latents (fp32, UNet latent space).
    /// </summary>
    public Tensor Sample(ISampler sampler, Tensor initialNoise, Tensor cond, Tensor uncond, double cfg, int steps,
        INoiseSource? noise = null, IProgress<SamplingProgress>? progress = null, CancellationToken ct = default, Action<SamplerStep>? onStep = null)
    {
        var dev = model.Compute.Device;
        var dtype = model.Compute.DType;
        long n = initialNoise.shape[0];
        using var scope = torch.NewDisposeScope();
        var context = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)], 0).to(dtype).to(dev);
        Tensor Denoise(Tensor x, Tensor t)
        {
            Tensor guided;
            using (var s = torch.NewDisposeScope())
            {
                var input = torch.cat([x, x], 0).to(dtype);
                var output = model.UNet.forward(input, t, context).to(ScalarType.Float32);
                var chunks = output.chunk(2, 0);
                guided = (chunks[0] + cfg * (chunks[1] - chunks[0])).MoveToOuterDisposeScope();
            }
            // The step's activations are free now; give their pages back before the next step allocates anew.
            HeapTrim.ReleaseFreedMemory();
            return guided;
        }
        var latents = sampler.Sample(Denoise, initialNoise.to(ScalarType.Float32).to(dev), model.Schedule, steps, noise, progress, ct, onStep);
        return latents.MoveToOuterDisposeScope();
    }

    /// <summary>VAE decode to a [B, 3, H, W] float image in [0, 1]: <c>clamp(decode(latents / scaling) / 2 + 0.5)</c>.</summary>
    public Tensor Decode(Tensor latents) => Decode(latents, VaeTilingMode.Auto);

    /// <summary>As <see cref="Decode(Tensor)"/>, tiled as <paramref name="tiling"/> says (auto: above 768x768 pixels, see <see cref="VaeTiling.AutoTiles"/>).</summary>
    public Tensor Decode(Tensor latents, VaeTilingMode tiling)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var x = (latents / model.Vae.ScalingFactor).to(model.Compute.DType);
        bool tiled = tiling == VaeTilingMode.On || (tiling == VaeTilingMode.Auto && VaeTiling.AutoTiles(x.shape[2], x.shape[3]));
        var img = (tiled ? VaeTiling.Default.Decode(model.Vae, x) : model.Vae.Decode(x)).to(ScalarType.Float32);
        return img.div_(2).add_(0.5).clamp_(0, 1).cpu().MoveToOuterDisposeScope();
    }
}
