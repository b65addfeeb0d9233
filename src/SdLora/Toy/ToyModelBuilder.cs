using System.Diagnostics;
using SdLora.Imaging;
using SdLora.IO;
using SdLora.Models;
using SdLora.Pipelines;
using SdLora.Sampling;
using SdLora.Text;
using SdLora.Training;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Toy;

/// <summary>
/// How the toy model is built. Sizes are SD1.x's architecture with small channels; the time budget
/// (<see cref="Minutes"/>) sets the step counts unless <see cref="VaeSteps"/>/<see cref="UNetSteps"/> fix them (a build
/// with the same seed, step counts and thread count repeats exactly on the same CPU).
/// </summary>
public sealed record ToyBuildOptions
{
    public long Seed { get; init; } = 1;
    /// <summary>Wall-clock budget for the whole build, evaluation included.</summary>
    public double Minutes { get; init; } = 40;
    /// <summary>Share of the training time given to the VAE (the rest, after encoding the latents, goes to the UNet).</summary>
    public double VaeShare { get; init; } = 0.4;
    public int? VaeSteps { get; init; }
    public int? UNetSteps { get; init; }
    /// <summary>A toy model folder whose VAE is reused as it is (the VAE stage is skipped; only the UNet and text encoder train).</summary>
    public string? VaeFrom { get; init; }
    /// <summary>
    /// A toy model folder whose UNet and text encoder the UNet stage starts from instead of fresh weights (to train a
    /// built model further, e.g. with other settings). Null: fresh weights from the seed.
    /// </summary>
    public string? UNetFrom { get; init; }

    /// <summary>
    /// The VAE's shape: three blocks, so two halvings and 16x16 latents for 64x64 pictures (SD's four blocks give 8x8,
    /// which measured far worse: 256 numbers per picture lost the shapes' outlines and every colour). One norm group:
    /// GroupNorm takes each group's mean and spread away, and a flat colour is exactly a per-channel mean, so small
    /// groups lose it; measured after 300 steps, colour accuracy of the reconstructions 0.38 with one group against 0.19
    /// with eight groups of four channels after 400. What made its colours right was batch and steps, not loss tricks:
    /// measured with ToyScorer on 64 fresh pictures, batch 8 without extra weight on the colour part of the error gave
    /// colour right 72 % and background 100 % after 300 steps (batch 4 with that weight: 38 % and 44 % after 1370), and
    /// 98 % and 100 % after 1200 steps (shape 91 %). Narrower (16/32/64) or a higher learning rate (4e-3) did worse at 300
    /// steps (34 %, 23 %).
    /// </summary>
    public AutoencoderKLConfig Vae { get; init; } = new(BlockOutChannels: [32, 64, 64], LayersPerBlock: 1, NormNumGroups: 1, SampleSize: ToyWorld.ImageSize);
    /// <summary>
    /// The UNet: SD1.x's blocks at three levels (16, 8 and 4 latent pixels), each with cross-attention to the prompt (SD's
    /// last down and first up blocks have none; here every level must hear the prompt: colour, shape and place).
    /// </summary>
    public UNetConfig UNet { get; init; } = new(BlockOutChannels: [32, 64, 64], LayersPerBlock: 1, NormNumGroups: 4, CrossAttentionDim: 32,
        AttentionHeadDim: [4, 4, 4], SampleSize: ToyWorld.ImageSize / 4,
        DownBlockTypes: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        UpBlockTypes: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]);
    public ClipTextConfig TextEncoder { get; init; } = new(HiddenSize: 32, IntermediateSize: 128, NumHiddenLayers: 2, NumAttentionHeads: 4);

    public int VaeBatch { get; init; } = 8;
    public double VaeLearningRate { get; init; } = 2e-3;
    /// <summary>Weight of the KL term against the per-pixel reconstruction loss (SD's VAE: 1e-6 on summed losses, the same ratio).</summary>
    public double KlWeight { get; init; } = 1e-5;
    /// <summary>Share of the VAE's training pictures that show held-out shapes or colours (the VAE must draw them later).</summary>
    public double VaeHeldOutShare { get; init; } = 0.25;
    /// <summary>Extra weight of the shape's pixels in the reconstruction loss (1 + this, the background's 1).</summary>
    public double VaeForegroundWeight { get; init; } = 4;
    /// <summary>
    /// Extra weight of the colour part of the reconstruction error (the error less its mean over the channels). Off by
    /// default: measured, it did not help the colours (see <see cref="Vae"/>).
    /// </summary>
    public double VaeChromaWeight { get; init; }

    /// <summary>Distinct pictures encoded once for the UNet (their captions are drawn afresh each time they are used).</summary>
    public int LatentImages { get; init; } = 6000;
    public int UNetBatch { get; init; } = 32;
    public double UNetLearningRate { get; init; } = 1e-3;
    public bool TrainTextEncoder { get; init; } = true;
    public double TextEncoderLearningRate { get; init; } = 1e-3;
    /// <summary>Share of captions replaced by the empty prompt, so classifier-free guidance has an unconditional model.</summary>
    public double CaptionDropout { get; init; } = 0.1;
    public double MinSnrGamma { get; init; } = 5;
    /// <summary>
    /// Offset noise (kohya's --noise_offset): a random constant per picture and channel added to the training noise. The
    /// SD1 schedule leaves some of the picture in its noisiest step, and in a 16x16 latent the mean of pure noise is as
    /// large as that leak, so without the offset the model reads a picture's overall colour (the background) from the
    /// starting noise and not from the prompt: measured, the background followed the seed whatever the prompt said.
    /// Off by default: from scratch, 3000 steps with offset 0.3 drew backgrounds right 97 % but shapes only 13 % (the
    /// offset's share of the loss crowds out the outlines); 400 steps of 0.3 on a model trained without it took the
    /// backgrounds from 33 % to 77 % and kept most shapes. So the bundled model is built in two runs (see its card).
    /// </summary>
    public double NoiseOffset { get; init; }
    /// <summary>Debiased estimation loss weighting (<see cref="DiffusionLossOptions.DebiasedEstimation"/>).</summary>
    public bool DebiasedEstimation { get; init; }
    /// <summary>Decay of the exponential moving average of the UNet and text-encoder weights that is saved.</summary>
    public double EmaDecay { get; init; } = 0.998;
    public int WarmupSteps { get; init; } = 50;
    /// <summary>Seconds between saves of the UNet stage's progress (a build stopped or killed goes on from the last one when run again).</summary>
    public double CheckpointSeconds { get; init; } = 300;

    /// <summary>Storage type of the saved weights.</summary>
    public ScalarType SaveDType { get; init; } = ScalarType.Float16;
    /// <summary>Seconds kept for the evaluation at the end.</summary>
    public double EvaluationSeconds { get; init; } = 60;
    /// <summary>Pictures per base prompt in the evaluation written to the card.</summary>
    public int EvaluationSeeds { get; init; } = 2;
    /// <summary>The evaluation's prompts (default: <see cref="ToyEvaluation.BasePrompts"/>, every base shape in every colour).</summary>
    public IReadOnlyList<string>? EvaluationPrompts { get; init; }

    public ToyBuildOptions Validate()
    {
        if (Minutes <= 0 && ((VaeSteps is null && VaeFrom is null) || UNetSteps is null))
            throw new SdLoraException($"--minutes {Minutes}: give a positive time budget, or fix both --vae-steps and --unet-steps");
        if (VaeSteps < 1 || UNetSteps < 1) throw new SdLoraException("--vae-steps and --unet-steps must be at least 1");
        if (VaeShare is <= 0 or >= 1) throw new SdLoraException($"VAE share {VaeShare}: use a fraction between 0 and 1");
        if (UNetLearningRate <= 0 || TextEncoderLearningRate <= 0) throw new SdLoraException("--unet-lr and --text-encoder-lr must be positive");
        if (NoiseOffset < 0) throw new SdLoraException($"--noise-offset {NoiseOffset}: use 0 (off) or a small positive value such as 0.1");
        if (UNetBatch < 1) throw new SdLoraException($"--unet-batch {UNetBatch}: use at least 1 picture per step");
        if (LatentImages < UNetBatch) throw new SdLoraException($"--unet-batch {UNetBatch}: use at most {LatentImages} (the pictures encoded for the UNet stage)");
        return this;
    }
}

/// <summary>Progress of a build: <see cref="Stage"/> step <see cref="Step"/> of <see cref="Steps"/>, with the smoothed loss.</summary>
public sealed record ToyBuildProgress(string Stage, int Step, int Steps, double Loss = double.NaN, double StepsPerSecond = 0, TimeSpan Eta = default, string Message = "");

/// <summary>What a build made and measured.</summary>
public sealed record ToyBuildResult(string OutputDir, int VaeSteps, int UNetSteps, double VaeLoss, double UNetLoss, double ScalingFactor,
    TimeSpan VaeTime, TimeSpan UNetTime, TimeSpan Elapsed, bool StoppedEarly, ToySummary Evaluation, IReadOnlyDictionary<string, ToySummary> PerShape,
    IReadOnlyDictionary<string, ToySummary> PerColour)
{
    /// <summary>
    /// The VAE alone on fresh world pictures (encode, decode, scored against each picture's full caption): what the UNet
    /// can draw at best. Empty when not measured.
    /// </summary>
    public ToySummary VaeReconstruction { get; init; } = ToySummary.Of([]);
}

/// <summary>
/// Builds the toy base model from scratch with sdlora's own model code: first the VAE (SD1.x's AutoencoderKL with small
/// channels; L1 + L2 reconstruction and a KL term) on pictures of the toy world, then the UNet and the CLIP text encoder
/// together on the VAE's latents of base scenes and their captions (epsilon prediction on SD1.x's noise schedule, the
/// LoRA trainer's <see cref="DiffusionLoss"/> with min-SNR weighting, AdamW, an EMA of the weights). The result is a
/// diffusers folder that every loader, sampler, LoRA and trainer of sdlora uses unchanged, with a card (README.md) and
/// a sheet of samples. Every random draw comes from generators seeded by <see cref="ToyBuildOptions.Seed"/>.
/// </summary>
public sealed class ToyModelBuilder(ToyBuildOptions options)
{
    private const long VaeStream = 0x7A3, LatentStream = 0x1A7, UNetStream = 0x2E7, InitStream = 0x1417, ScaleStream = 0x5CA1E, VaeCheckStream = 0xC4EC;

    public ToyBuildOptions Options { get; } = options.Validate();

    private readonly Stopwatch _clock = new();
    private string _stageFolder = "";
    private IProgress<ToyBuildProgress>? _progress;
    private CancellationToken _ct;

    public ToyBuildResult Build(string outputDir, IProgress<ToyBuildProgress>? progress = null, CancellationToken ct = default)
    {
        _progress = progress;
        _ct = ct;
        _clock.Restart();
        _stageFolder = StageFolder(outputDir);
        var o = Options;
        var tokenizer = ClipTokenizer.Default;
        double budget = o.Minutes * 60;

        var vaeClock = Stopwatch.StartNew();
        var vaeTimeBefore = TimeSpan.Zero;
        AutoencoderKL vaeScaled;
        int vaeSteps;
        double vaeLoss, scaling;
        // A build stopped after its VAE stage left it in the stage folder: run again with the same settings, it goes on from there.
        string? from = o.VaeFrom;
        if (from is null && File.Exists(Path.Combine(_stageFolder, "vae", "diffusion_pytorch_model.safetensors"))
            && ToyBuildRecord.Read(_stageFolder) is { } stage && StageMatches(stage))
        {
            from = _stageFolder;
            Report("VAE", 0, 0, message: $"reusing the VAE saved in {from} by a stopped build");
        }
        if (from is not null)
        {
            // Stage 1 done before: the VAE of an earlier build (or of one stopped after its VAE stage), as it was saved.
            vaeScaled = LoadVae(from);
            (vaeSteps, vaeLoss, scaling) = (0, double.NaN, vaeScaled.ScalingFactor);
            // Its build record, when there is one, says how it was trained (the card repeats it).
            if (ToyBuildRecord.Read(from) is { VaeSteps: > 0 } record && record.Seed == o.Seed)
                (vaeSteps, vaeLoss, vaeTimeBefore) = (record.VaeSteps, record.VaeLoss, TimeSpan.FromSeconds(record.VaeSeconds));
        }
        else
        {
            using var vae = new AutoencoderKL(o.Vae);
            ModuleInit.Seeded(vae, Seed(InitStream, 1), zeroResidualOutputs: false);
            // The posterior starts narrow (std e^-2): sampling noise as wide as the latents themselves would hide the
            // colours from the decoder until the KL term's small pull had narrowed it.
            using (torch.no_grad()) vae.quant_conv.bias!.narrow(0, o.Vae.LatentChannels, o.Vae.LatentChannels).fill_(-4);
            (vaeSteps, vaeLoss) = TrainVae(vae, o.VaeSteps, o.VaeShare * (budget - o.EvaluationSeconds));
            scaling = ScalingFactor(vae);
            vaeScaled = new AutoencoderKL(o.Vae with { ScalingFactor = scaling });
            CopyWeights(vae, vaeScaled);
            // The UNet learns the latents of the VAE as it ships (rounded to the saved dtype), which is also what a later
            // build reusing it (VaeFrom) sees: both then train the same UNet.
            using (torch.no_grad())
                foreach (var p in vaeScaled.parameters()) p.copy_(p.to(o.SaveDType).to(p.dtype));
            SaveVaeStage(StageFolder(outputDir), vaeScaled, vaeSteps, vaeLoss, vaeClock.Elapsed);
        }
        vaeClock.Stop();
        using var vaeHandle = vaeScaled;

        var vaeReconstruction = MeasureVae(vaeScaled);
        Report("VAE check", 1, 1, message: $"reconstructions of {vaeReconstruction.Images} fresh pictures: shape right {vaeReconstruction.ShapeAccuracy:P0}, " +
            $"colour right {vaeReconstruction.ColourAccuracy:P0}, background right {vaeReconstruction.BackgroundAccuracy:P0}");
        var (scenes, latents) = EncodeLatents(vaeScaled);
        using var latentsHandle = latents;
        using var unet = new UNet2DConditionModel(o.UNet);
        using var textEncoder = new ClipTextModel(o.TextEncoder);
        ModuleInit.Seeded(unet, Seed(InitStream, 2), zeroResidualOutputs: true);
        ModuleInit.Seeded(textEncoder, Seed(InitStream, 3), zeroResidualOutputs: false);
        if (o.UNetFrom is { } unetFrom)
        {
            LoadPart(unetFrom, unet, "unet", "diffusion_pytorch_model.safetensors");
            LoadPart(unetFrom, textEncoder, "text_encoder", "model.safetensors");
            Report("UNet", 0, 0, message: $"starting from the UNet and text encoder of {unetFrom}");
        }
        var unetClock = Stopwatch.StartNew();
        double unetBudget = budget - _clock.Elapsed.TotalSeconds - o.EvaluationSeconds;
        var (unetSteps, unetLoss, stopped) = TrainUNet(unet, textEncoder, tokenizer, scenes, latents, o.UNetSteps, unetBudget);
        unetClock.Stop();

        // The model is written whole first (and moved into place only when complete); the evaluation then loads it
        // back, so what is measured is what ships, and the card and samples are added beside it.
        Report("saving", 0, 1, message: outputDir);
        var target = Path.TrimEndingDirectorySeparator(Path.GetFullPath(outputDir));
        DiffusersFolderWriter.Write(target, unet, vaeScaled, textEncoder, tokenizer, NoiseSchedule.StableDiffusion1, o.SaveDType);
        if (stopped)
        {
            // Stopped: the partly trained model is kept as it is, unmeasured (no card); run again to go on from the stop.
            Report("stopped", 0, 1, message: $"the partly trained model is in {target}; run the same command again to go on");
            return new ToyBuildResult(target, vaeSteps, unetSteps, vaeLoss, unetLoss, scaling, vaeClock.Elapsed + vaeTimeBefore, unetClock.Elapsed,
                _clock.Elapsed + vaeTimeBefore, true, ToySummary.Of([]), new Dictionary<string, ToySummary>(), new Dictionary<string, ToySummary>())
                { VaeReconstruction = vaeReconstruction };
        }
        var (summary, perShape, perColour, samples) = Evaluate(target);
        var result = new ToyBuildResult(target, vaeSteps, unetSteps, vaeLoss, unetLoss, scaling, vaeClock.Elapsed + vaeTimeBefore, unetClock.Elapsed,
            _clock.Elapsed + vaeTimeBefore, stopped, summary, perShape, perColour) { VaeReconstruction = vaeReconstruction };
        PngFile.Write(Path.Combine(target, "samples.png"), samples);
        AtomicFile.WriteAllText(Path.Combine(target, ToyBuildRecord.FileName), ToyModelCard.BuildJson(o, result));
        AtomicFile.WriteAllText(Path.Combine(target, "README.md"), ToyModelCard.Write(o, result, Path.GetFileName(target)));
        // A stopped build keeps its stage folder: run again, it goes on from there.
        if (!stopped && Directory.Exists(_stageFolder)) Directory.Delete(_stageFolder, true);
        Report("done", 1, 1);
        return result;
    }

    /// <summary>
    /// Where a build keeps its trained VAE until the whole model is written (<c>OUT.vae</c>): a build stopped in its UNet
    /// stage can go on from there with <see cref="ToyBuildOptions.VaeFrom"/>.
    /// </summary>
    public static string StageFolder(string outputDir) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(outputDir)) + ".vae";

    /// <summary>
    /// True when a build into <paramref name="outputDir"/> was stopped and left its stage folder: running it again goes on
    /// from there and replaces the partly trained model it wrote, so that folder is not the user's to protect.
    /// </summary>
    public static bool HasStoppedBuild(string outputDir) => ToyBuildRecord.Read(StageFolder(outputDir)) is not null;

    private void SaveVaeStage(string folder, AutoencoderKL vae, int steps, double loss, TimeSpan time)
    {
        var dir = Path.Combine(folder, "vae");
        Directory.CreateDirectory(dir);
        AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), DiffusersFolderWriter.VaeConfigJson(vae.Config).ToJsonString(new() { WriteIndented = true }) + "\n");
        using (var scope = torch.NewDisposeScope())
            IO.Safetensors.Save(Path.Combine(dir, "diffusion_pytorch_model.safetensors"),
                vae.named_parameters().Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter.detach().to(Options.SaveDType).contiguous())).ToList());
        AtomicFile.WriteAllText(Path.Combine(folder, ToyBuildRecord.FileName), System.Text.Json.JsonSerializer.Serialize(new
        {
            seed = Options.Seed, vae_steps = steps, vae_loss = loss, vae_seconds = time.TotalSeconds,
        }) + "\n");
        Report("VAE", steps, steps, loss, message: $"saved to {folder} (a stopped build goes on with --vae-from it)");
    }

    /// <summary>Whether a stage folder's VAE was trained with this build's seed (and VAE step count, when fixed).</summary>
    private bool StageMatches(ToyBuildRecord stage) => stage.Seed == Options.Seed && (Options.VaeSteps is not { } n || stage.VaeSteps == n);

    private static void LoadPart(string folder, nn.Module module, string part, string file)
    {
        var path = Path.Combine(folder, part, file);
        if (!File.Exists(path)) throw new SdLoraException($"{path}: not found; give a toy model folder that `sdlora toy build` wrote");
        using var weights = IO.Safetensors.Open(path);
        using (torch.no_grad()) ModuleWeights.Load(module, weights);
    }

    private static AutoencoderKL LoadVae(string folder)
    {
        var config = AutoencoderKLConfig.FromDiffusersJson(File.ReadAllText(Path.Combine(folder, "vae", "config.json")));
        AutoencoderKL vae;
        using (torch.no_grad()) vae = new AutoencoderKL(config);
        LoadPart(folder, vae, "vae", "diffusion_pytorch_model.safetensors");
        vae.eval();
        return vae;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Stage 1: the VAE.
    // ---------------------------------------------------------------------------------------------------------------

    /// <summary>A picture for the VAE: mostly base scenes, some with held-out shapes or colours (it must draw those too).</summary>
    private ToyScene VaeScene(Random rng)
    {
        if (rng.NextDouble() >= Options.VaeHeldOutShare) return ToyWorld.RandomScene(rng);
        var shapes = ToyWorld.Shapes.Concat(ToyWorld.HeldOutShapes).ToList();
        var colours = ToyWorld.Colours.Concat(ToyWorld.HeldOutColours).ToList();
        var bg = ToyWorld.Backgrounds[rng.Next(ToyWorld.Backgrounds.Count)];
        var fgChoices = colours.Where(c => c.Name != bg.Name).ToList();
        return ToyWorld.Place(rng, shapes[rng.Next(shapes.Count)], fgChoices[rng.Next(fgChoices.Count)], bg,
            ToyWorld.Sizes[rng.Next(ToyWorld.Sizes.Count)], ToyWorld.Positions[rng.Next(ToyWorld.Positions.Count)].Phrase);
    }

    private (int Steps, double Loss) TrainVae(AutoencoderKL vae, int? fixedSteps, double seconds)
    {
        var o = Options;
        vae.train();
        var parameters = vae.parameters().ToList();
        using var optimizer = new AdamW([new ParamGroup("vae", parameters, o.VaeLearningRate)], weightDecay: 0);
        using var noiseGenerator = new Generator(0, CPU);
        var plan = new StepPlan(fixedSteps, seconds, o.WarmupSteps);
        double smoothed = double.NaN;
        var clock = Stopwatch.StartNew();
        for (int step = 0; step < plan.Steps; step++)
        {
            _ct.ThrowIfCancellationRequested();
            double value = Retrying(optimizer, () =>
            {
                using var scope = torch.NewDisposeScope();
                var rng = SeededRandom.For(o.Seed, VaeStream, step);
                var x = Batch(Enumerable.Range(0, o.VaeBatch).Select(_ => ToyWorld.Render(VaeScene(rng))).ToList());
                var posterior = vae.Encode(x);
                noiseGenerator.manual_seed((long)(SeededRandom.Mix(o.Seed, VaeStream, step, 1) & 0x7FFFFFFF));
                var z = posterior.Sample(torch.randn(posterior.Mean.shape, generator: noiseGenerator));
                var diff = vae.Decode(z) - x;
                // The shape covers a tenth of a picture: its pixels weigh more, or the VAE learns the background first and
                // the shapes' colours last.
                var weight = 1 + o.VaeForegroundWeight * ForegroundMask(x);
                var reconstruction = ((diff.abs() + diff.pow(2)) * weight).sum() / (weight.sum() * 3);
                // Optionally the colour part of the error (each pixel's error less its mean over R, G, B) counts again.
                if (o.VaeChromaWeight > 0)
                {
                    var chroma = diff - diff.mean([1], keepdim: true);
                    reconstruction = reconstruction + o.VaeChromaWeight * ((chroma.abs() + chroma.pow(2)) * weight).sum() / (weight.sum() * 3);
                }
                var kl = 0.5 * (posterior.Mean.pow(2) + posterior.LogVar.exp() - 1 - posterior.LogVar).sum([1, 2, 3]).mean() / x[0].numel();
                (reconstruction + o.KlWeight * kl).backward();
                return reconstruction.item<float>();
            });
            if (!double.IsFinite(value)) throw new SdLoraException($"toy build: the VAE loss became {value} at step {step + 1}; lower the VAE learning rate");
            GradientClipping.ClipGradNorm(parameters, 1.0);
            optimizer.Step(plan.LearningRateMultiplier(step));
            optimizer.ZeroGrad();
            smoothed = double.IsNaN(smoothed) ? value : 0.95 * smoothed + 0.05 * value;
            plan.Observe(step, clock.Elapsed.TotalSeconds);
            Report("VAE", step + 1, plan.Steps, smoothed, clock.Elapsed.TotalSeconds, plan.Steps);
        }
        vae.eval();
        return (plan.Steps, smoothed);
    }

    /// <summary>1 / the standard deviation of the VAE's latents over fresh pictures, as SD's 0.18215 was found.</summary>
    private double ScalingFactor(AutoencoderKL vae)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var rng = SeededRandom.For(Options.Seed, ScaleStream);
        var x = Batch(Enumerable.Range(0, 256).Select(_ => ToyWorld.Render(ToyWorld.RandomScene(rng))).ToList());
        double std = vae.Encode(x).Mean.std().item<float>();
        return Math.Round(1 / std, 5);
    }

    /// <summary>Pictures in <see cref="MeasureVae"/>.</summary>
    public const int VaeCheckPictures = 64;

    /// <summary>
    /// The VAE's reconstructions (posterior mean, decoded) of fresh base pictures, scored by <see cref="ToyScorer"/> against
    /// each picture's full caption: the colours, shapes and backgrounds the UNet can draw at best.
    /// </summary>
    private ToySummary MeasureVae(AutoencoderKL vae)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var rng = SeededRandom.For(Options.Seed, VaeCheckStream);
        var scenes = Enumerable.Range(0, VaeCheckPictures).Select(_ => ToyWorld.RandomScene(rng)).ToList();
        var decoded = vae.Decode(vae.Encode(Batch(scenes.Select(s => ToyWorld.Render(s)).ToList())).Mean);
        var images01 = (decoded + 1) / 2;
        return ToySummary.Of(scenes.Select((s, i) =>
        {
            var caption = ToyWorld.FullCaption(s);
            var image = RgbImage.FromTensor01(images01[i]);
            return new ToyGenerated(caption, 0, image, ToyScorer.Score(image, ToyPrompt.Parse(caption)));
        }).ToList());
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Stage 2: latents of base scenes, then the UNet and text encoder.
    // ---------------------------------------------------------------------------------------------------------------

    private (List<ToyScene> Scenes, Tensor Latents) EncodeLatents(AutoencoderKL vae)
    {
        var o = Options;
        var scenes = new List<ToyScene>(o.LatentImages);
        for (int i = 0; i < o.LatentImages; i++) scenes.Add(ToyWorld.RandomScene(SeededRandom.For(o.Seed, LatentStream, i)));
        var parts = new List<Tensor>();
        const int chunk = 64;
        using var noGrad = torch.no_grad();
        for (int i = 0; i < scenes.Count; i += chunk)
        {
            _ct.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var x = Batch(scenes.Skip(i).Take(chunk).Select(s => ToyWorld.Render(s)).ToList());
            parts.Add((vae.Encode(x).Mean * vae.ScalingFactor).MoveToOuterDisposeScope());
            Report("latents", Math.Min(i + chunk, scenes.Count), scenes.Count);
        }
        var all = torch.cat(parts, 0);
        foreach (var p in parts) p.Dispose();
        return (scenes, all);
    }

    private (int Steps, double Loss, bool Stopped) TrainUNet(UNet2DConditionModel unet, ClipTextModel textEncoder, ClipTokenizer tokenizer,
        List<ToyScene> scenes, Tensor latents, int? fixedSteps, double seconds)
    {
        var o = Options;
        var schedule = NoiseSchedule.StableDiffusion1;
        unet.train();
        textEncoder.train(o.TrainTextEncoder);
        var unetParams = unet.parameters().ToList();
        var teParams = o.TrainTextEncoder ? textEncoder.parameters().ToList() : [];
        if (!o.TrainTextEncoder) foreach (var p in textEncoder.parameters()) p.requires_grad = false;
        var groups = new List<ParamGroup> { new("unet", unetParams, o.UNetLearningRate) };
        if (teParams.Count > 0) groups.Add(new ParamGroup("text_encoder", teParams, o.TextEncoderLearningRate));
        var trainable = groups.SelectMany(g => g.Parameters).ToList();
        using var optimizer = new AdamW(groups, weightDecay: 0.01);
        using var ema = new WeightAverage(trainable);
        var ids = new Dictionary<string, long[]>();
        var lossOptions = new DiffusionLossOptions(MinSnrGamma: o.MinSnrGamma, DebiasedEstimation: o.DebiasedEstimation);
        var plan = new StepPlan(fixedSteps, seconds, o.WarmupSteps);
        double smoothed = double.NaN;
        bool stopped = false;
        var clock = Stopwatch.StartNew();
        int step = 0;
        var statePath = Path.Combine(_stageFolder, "unet_state.safetensors");
        if (File.Exists(statePath))
        {
            (step, smoothed) = LoadUNetState(statePath, unet, textEncoder, optimizer, ema, plan, fixedSteps);
            Report("UNet", step, plan.Steps, smoothed, message: $"resuming from {statePath}");
        }
        var lastSave = Stopwatch.StartNew();
        for (; step < plan.Steps; step++)
        {
            if (_ct.IsCancellationRequested)
            {
                SaveUNetState(statePath, unet, textEncoder, optimizer, ema, step, plan.Steps, smoothed);
                stopped = true;
                break;
            }
            if (step > 0 && lastSave.Elapsed.TotalSeconds > o.CheckpointSeconds)
            {
                SaveUNetState(statePath, unet, textEncoder, optimizer, ema, step, plan.Steps, smoothed);
                lastSave.Restart();
            }
            double value = Retrying(optimizer, () =>
            {
                using var scope = torch.NewDisposeScope();
                var rng = SeededRandom.For(o.Seed, UNetStream, step);
                var index = new long[o.UNetBatch];
                var tokens = new long[o.UNetBatch * 77];
                for (int i = 0; i < o.UNetBatch; i++)
                {
                    index[i] = rng.Next(scenes.Count);
                    var caption = rng.NextDouble() < o.CaptionDropout ? "" : ToyWorld.Caption(scenes[(int)index[i]], rng);
                    if (!ids.TryGetValue(caption, out var t)) ids[caption] = t = tokenizer.EncodeForModel(caption);
                    Array.Copy(t, 0, tokens, i * 77, 77);
                }
                var x0 = latents.index_select(0, torch.tensor(index));
                using var g = new Generator(SeededRandom.Mix(o.Seed, UNetStream, step, 1), CPU);
                var noise = torch.randn(x0.shape, generator: g);
                var timesteps = torch.randint(0, schedule.NumTrainTimesteps, [o.UNetBatch], ScalarType.Int64, CPU, generator: g);
                if (o.NoiseOffset > 0) noise = noise + o.NoiseOffset * torch.randn([x0.shape[0], x0.shape[1], 1, 1], generator: g);
                var idTensor = torch.tensor(tokens, [o.UNetBatch, 77], ScalarType.Int64);
                Tensor context;
                if (o.TrainTextEncoder) context = textEncoder.Encode(idTensor);
                else using (torch.no_grad()) context = textEncoder.Encode(idTensor);
                using var loss = DiffusionLoss.Compute(unet, schedule, x0, noise, timesteps, context, null, lossOptions);
                loss.Loss.backward();
                return loss.Loss.item<float>();
            });
            if (!double.IsFinite(value)) throw new SdLoraException($"toy build: the UNet loss became {value} at step {step + 1}; lower the UNet learning rate");
            GradientClipping.ClipGradNorm(trainable, 1.0);
            optimizer.Step(plan.LearningRateMultiplier(step));
            optimizer.ZeroGrad();
            ema.Update(Math.Min(o.EmaDecay, (1.0 + step) / (10.0 + step)));
            smoothed = double.IsNaN(smoothed) ? value : 0.98 * smoothed + 0.02 * value;
            plan.Observe(step, clock.Elapsed.TotalSeconds);
            Report("UNet", step + 1, plan.Steps, smoothed, clock.Elapsed.TotalSeconds, plan.Steps);
        }
        ema.Apply();
        unet.eval();
        textEncoder.eval();
        foreach (var p in textEncoder.parameters()) p.requires_grad = true;
        return (step, smoothed, stopped);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Evaluation of the saved folder.
    // ---------------------------------------------------------------------------------------------------------------

    private (ToySummary, Dictionary<string, ToySummary>, Dictionary<string, ToySummary>, RgbImage) Evaluate(string folder)
    {
        Report("evaluating", 0, 1);
        using var model = StableDiffusionModel.Load(folder);
        var prompts = Options.EvaluationPrompts ?? ToyEvaluation.BasePrompts();
        var generated = new List<ToyGenerated>();
        for (int i = 0; i < prompts.Count; i++)
        {
            generated.AddRange(ToyEvaluation.Generate(model, [prompts[i]], Options.EvaluationSeeds, 1000, ct: _ct));
            Report("evaluating", i + 1, prompts.Count);
        }
        var summary = ToySummary.Of(generated);
        var perShape = ToyWorld.Shapes.ToDictionary(s => s, s => ToySummary.Of(generated.Where(g => ToyPrompt.Parse(g.Prompt).Shape == s).ToList()));
        var perColour = ToyWorld.Colours.ToDictionary(c => c.Name, c => ToySummary.Of(generated.Where(g => ToyPrompt.Parse(g.Prompt).Colour?.Name == c.Name).ToList()));
        var rows = ToyWorld.Shapes.Select(s =>
        {
            var mine = generated.Where(g => ToyPrompt.Parse(g.Prompt).Shape == s && g.Seed == 1000).ToList();
            return new ContactSheetRow($"a <colour> {s} on a <background> background", mine.Select(g => g.Image).ToList(),
                mine.Select(g => $"{ToyPrompt.Parse(g.Prompt).Colour!.Name} {g.Score.Overall:F2}").ToList());
        }).ToList();
        var sheet = ContactSheet.Render($"toy model: one sample per base prompt (seed 1000, {ToyEvaluation.Sampler} {ToyEvaluation.Steps} steps, CFG {ToyEvaluation.CfgScale}), score under each", rows, 64, 240);
        return (summary, perShape, perColour, sheet);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Helpers.
    // ---------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// The UNet stage's progress, saved every <see cref="ToyBuildOptions.CheckpointSeconds"/> into the stage folder: the
    /// weights, their average, the optimizer state and the position. A build run again with the same settings goes on from
    /// it and ends with the model an uninterrupted build makes.
    /// </summary>
    private void SaveUNetState(string path, UNet2DConditionModel unet, ClipTextModel textEncoder, TrainingOptimizer optimizer, WeightAverage ema,
        int step, int steps, double smoothed)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        tensors.AddRange(unet.named_parameters().Select(p => new KeyValuePair<string, Tensor>("unet." + p.name, p.parameter)));
        tensors.AddRange(textEncoder.named_parameters().Select(p => new KeyValuePair<string, Tensor>("text_encoder." + p.name, p.parameter)));
        tensors.AddRange(ema.Averages.Select((a, i) => new KeyValuePair<string, Tensor>($"ema.{i}", a)));
        tensors.AddRange(optimizer.StateDict().Select(kv => new KeyValuePair<string, Tensor>("optimizer." + kv.Key, kv.Value)));
        IO.Safetensors.Save(path, tensors, new Dictionary<string, string>
        {
            ["step"] = step.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["steps"] = steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["seed"] = Options.Seed.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["smoothed_loss"] = smoothed.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        });
    }

    private (int Step, double Smoothed) LoadUNetState(string path, UNet2DConditionModel unet, ClipTextModel textEncoder, TrainingOptimizer optimizer,
        WeightAverage ema, StepPlan plan, int? fixedSteps)
    {
        using var file = IO.Safetensors.Open(path);
        var md = file.Metadata;
        int steps = int.Parse(md["steps"], System.Globalization.CultureInfo.InvariantCulture);
        if (md["seed"] != Options.Seed.ToString(System.Globalization.CultureInfo.InvariantCulture) || (fixedSteps is { } f && f != steps))
            throw new SdLoraException($"{path}: holds a stopped build with other settings (seed {md["seed"]}, {steps} UNet steps); delete that folder to start over, or give the same settings");
        using var noGrad = torch.no_grad();
        foreach (var (prefix, module) in new (string, nn.Module)[] { ("unet.", unet), ("text_encoder.", textEncoder) })
            foreach (var (name, p) in module.named_parameters())
            {
                using var t = file.Load(prefix + name, p.dtype);
                p.copy_(t);
            }
        for (int i = 0; i < ema.Averages.Count; i++)
        {
            using var t = file.Load($"ema.{i}", ema.Averages[i].dtype);
            ema.Averages[i].copy_(t);
        }
        var state = file.Keys.Where(k => k.StartsWith("optimizer.")).ToDictionary(k => k["optimizer.".Length..], k => file.Load(k, ScalarType.Float32));
        optimizer.LoadStateDict(state);
        foreach (var t in state.Values) t.Dispose();
        plan.Fix(steps);
        return (int.Parse(md["step"], System.Globalization.CultureInfo.InvariantCulture), double.Parse(md["smoothed_loss"], System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>
    /// Runs a step's forward and backward pass, once more if libtorch reports an error: TorchSharp 0.107 can free a
    /// temporary scalar while a native call still uses it (a rare, timing-dependent failure of an otherwise fine step).
    /// The step is a pure function of the seed and the weights, and the optimizer has not moved yet, so the retry is exact.
    /// </summary>
    private static double Retrying(TrainingOptimizer optimizer, Func<double> forwardBackward)
    {
        for (int attempt = 1; ; attempt++)
        {
            try { return forwardBackward(); }
            catch (System.Runtime.InteropServices.ExternalException) when (attempt < 3) { optimizer.ZeroGrad(); }
        }
    }

    private Generator Seed(long stream, long part) => new(SeededRandom.Mix(Options.Seed, stream, part), CPU);

    private void Report(string stage, int step, int steps, double loss = double.NaN, double elapsed = 0, int total = 0, string message = "")
    {
        if (steps == int.MaxValue) steps = total = 0; // not measured yet
        double rate = elapsed > 0 ? step / elapsed : 0;
        var eta = rate > 0 && total > 0 ? TimeSpan.FromSeconds((total - step) / rate) : default;
        _progress?.Report(new ToyBuildProgress(stage, step, steps, loss, rate, eta, message));
    }

    /// <summary>[B, 1, H, W]: 1 where a pixel differs from the picture's corner (the background), else 0.</summary>
    private static Tensor ForegroundMask(Tensor x) =>
        (x - x.narrow(2, 0, 1).narrow(3, 0, 1)).abs().amax([1], keepdim: true).gt(0.05).to(ScalarType.Float32);

    /// <summary>[B, 3, H, W] in [-1, 1] from pictures of the same size.</summary>
    internal static Tensor Batch(IReadOnlyList<RgbImage> images)
    {
        using var scope = torch.NewDisposeScope();
        return torch.cat(images.Select(i => i.ToTensor()).ToList(), 0).MoveToOuterDisposeScope();
    }

    private static void CopyWeights(nn.Module from, nn.Module to)
    {
        using var noGrad = torch.no_grad();
        var source = from.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in to.named_parameters()) p.copy_(source[name]);
    }

    /// <summary>
    /// The number of steps of a stage and its learning-rate schedule (linear warm-up, then cosine down to a tenth). With a
    /// time budget, the step count is fixed after the warm-up from the measured speed; the schedule past the warm-up only
    /// depends on the count, so a rerun with that count fixed repeats the run.
    /// </summary>
    private sealed class StepPlan(int? fixedSteps, double seconds, int warmup)
    {
        private const int Probe = 10;
        private bool _fixed = fixedSteps is not null;
        private double _afterFirst;

        /// <summary>The stage's step count; <see cref="int.MaxValue"/> until measured.</summary>
        public int Steps { get; private set; } = fixedSteps ?? int.MaxValue;

        /// <summary>Fixes the step count (a resumed stage keeps the count it had measured).</summary>
        public void Fix(int steps) { Steps = steps; _fixed = true; }

        public void Observe(int step, double elapsed)
        {
            if (_fixed) return;
            // Step 0 pays one-time costs; the rate is measured from the steps after it.
            if (step == 0) { _afterFirst = elapsed; return; }
            if (step + 1 < Probe) return;
            double perStep = (elapsed - _afterFirst) / step;
            Steps = Math.Max(step + 1, (int)(seconds / Math.Max(perStep, 1e-6)));
            _fixed = true;
        }

        public double LearningRateMultiplier(int step)
        {
            if (step < warmup) return (step + 1) / (double)warmup;
            if (Steps <= warmup) return 1;
            double progress = Math.Clamp((step - warmup) / (double)Math.Max(1, Steps - warmup), 0, 1);
            return 0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * progress));
        }
    }

    /// <summary>An exponential moving average of parameters, kept outside every dispose scope.</summary>
    private sealed class WeightAverage : IDisposable
    {
        private readonly List<(TorchSharp.Modules.Parameter Param, Tensor Average)> _items;

        public WeightAverage(IEnumerable<TorchSharp.Modules.Parameter> parameters)
        {
            using var noGrad = torch.no_grad();
            _items = parameters.Select(p => (p, p.detach().clone().DetachFromDisposeScope())).ToList();
        }

        public IReadOnlyList<Tensor> Averages => _items.Select(i => i.Average).ToList();

        public void Update(double decay)
        {
            using var noGrad = torch.no_grad();
            // The scope holds the wrappers the in-place calls return, and the scalars are held for the loop: TorchSharp
            // 0.107 lets a temporary be finalized during the native call it was made for.
            using var scope = torch.NewDisposeScope();
            using var keep = decay.ToScalar();
            using var take = (1 - decay).ToScalar();
            foreach (var (p, a) in _items) a.mul_(keep).add_(p, take);
        }

        /// <summary>Puts the averages into the parameters.</summary>
        public void Apply()
        {
            using var noGrad = torch.no_grad();
            foreach (var (p, a) in _items) p.copy_(a);
        }

        public void Dispose() { foreach (var (_, a) in _items) a.Dispose(); }
    }
}
