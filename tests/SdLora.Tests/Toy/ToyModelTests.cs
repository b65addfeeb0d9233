using System.Text.Json;
using SdLora.IO;
using SdLora.Models;
using SdLora.Pipelines;
using SdLora.Imaging;
using SdLora.Toy;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace SdLora.Tests.Toy;

public class ToyModelTests(ITestOutputHelper output)
{
    public static string BundledModel => Path.Combine(Fixtures.RepoRoot, "assets", "toy-shapes");

    [Fact]
    public void The_bundled_toy_model_draws_each_base_shape_colour_and_background_from_its_prompt()
    {
        using var model = StableDiffusionModel.Load(BundledModel);
        var prompts = ToyEvaluation.QuickPrompts();
        var generated = ToyEvaluation.Generate(model, prompts, 2, 1000);
        var s = ToySummary.Of(generated);
        // Its VAE halves twice (16x16 latents): pictures still come out at the asked size.
        Assert.All(generated, g => Assert.Equal((ToyWorld.ImageSize, ToyWorld.ImageSize), (g.Image.Width, g.Image.Height)));
        foreach (var g in generated) output.WriteLine($"{g.Prompt} seed {g.Seed}: {g.Score}");

        // The two ends of the scale, measured here rather than assumed: chance = the same pictures scored against every
        // other prompt (what a model that ignores its prompt scores), best = the renderer's own pictures of the prompts.
        var chance = ToySummary.Of(generated.SelectMany(g => prompts.Where(p => p != g.Prompt)
            .Select(p => g with { Prompt = p, Score = ToyScorer.Score(g.Image, ToyPrompt.Parse(p)) })).ToList());
        var best = ToySummary.Of(prompts.SelectMany(p => new[] { 1000, 1001 }.Select(seed =>
        {
            var image = ToyPrompt.Parse(p).Render(seed);
            return new ToyGenerated(p, seed, image, ToyScorer.Score(image, ToyPrompt.Parse(p)));
        })).ToList());
        output.WriteLine($"model  {s}\nchance {chance}\nbest   {best}");
        void AtLeast(string what, double model, double chance, double best, double share) =>
            Assert.True(model >= chance + share * (best - chance),
                $"{what}: {model:F2}, needs {share:P0} of the way from chance {chance:F2} to the renderer's {best:F2}");
        AtLeast("colour right", s.ColourAccuracy, chance.ColourAccuracy, best.ColourAccuracy, ToyModelExpectations.ColourShare);
        AtLeast("background right", s.BackgroundAccuracy, chance.BackgroundAccuracy, best.BackgroundAccuracy, ToyModelExpectations.BackgroundShare);
        AtLeast("shape right", s.ShapeAccuracy, chance.ShapeAccuracy, best.ShapeAccuracy, ToyModelExpectations.ShapeShare);
        AtLeast("score", s.Overall, chance.Overall, best.Overall, ToyModelExpectations.ScoreShare);
    }

    [Fact]
    public void The_bundled_toy_models_VAE_keeps_the_shape_colour_and_background_of_world_pictures()
    {
        using var model = StableDiffusionModel.Load(BundledModel);
        // Fresh pictures (not the build's own check set), several seeds.
        var rng = new Random(20261130);
        var scenes = Enumerable.Range(0, 48).Select(_ => ToyWorld.RandomScene(rng)).ToList();
        var captions = scenes.Select(ToyWorld.FullCaption).ToList();
        List<RgbImage> decoded;
        using (torch.no_grad())
        using (var scope = torch.NewDisposeScope())
        {
            var x = torch.cat(scenes.Select(sc => ToyWorld.Render(sc).ToTensor()).ToList(), 0);
            var y = (model.Vae.Decode(model.Vae.Encode(x).Mean) + 1) / 2;
            decoded = Enumerable.Range(0, scenes.Count).Select(i => RgbImage.FromTensor01(y[i])).ToList();
        }
        var s = ToySummary.Of(decoded.Select((im, i) => new ToyGenerated(captions[i], 0, im, ToyScorer.Score(im, ToyPrompt.Parse(captions[i])))).ToList());
        // Chance: the same reconstructions scored against the other pictures' captions.
        var chance = ToySummary.Of(decoded.Select((im, i) =>
        {
            var other = captions[(i + 7) % captions.Count];
            return new ToyGenerated(other, 0, im, ToyScorer.Score(im, ToyPrompt.Parse(other)));
        }).ToList());
        output.WriteLine($"reconstructions {s}\nchance {chance}");
        // Measured shape / colour / background right: 91 / 98 / 100 % on the build's 64 pictures (its card), 77 / 96 / 100 %
        // on these 48; the renderer's own pictures score 100 %, chance about 20 / 15 / 20 %. Limits with room for sampling.
        Assert.True(s.ColourAccuracy >= 0.85, s.ToString());
        Assert.True(s.BackgroundAccuracy >= 0.9, s.ToString());
        Assert.True(s.ShapeAccuracy >= 0.6, s.ToString());
        Assert.True(s.ColourAccuracy > chance.ColourAccuracy + 0.5 && s.BackgroundAccuracy > chance.BackgroundAccuracy + 0.4, $"{s}\n{chance}");
    }

    [Fact]
    public void The_bundled_toy_model_does_not_draw_a_held_out_concept_before_it_is_taught()
    {
        using var model = StableDiffusionModel.Load(BundledModel);
        var concept = ToyWorld.DemoConcept;
        var generated = ToyEvaluation.Generate(model, [$"a photo of sks {ToyWorld.ClassWord}", $"a {concept.ColourName} {concept.Shape}"], 3, 1, concept.Target);
        Assert.True(generated.Count(g => g.Score.SeenShape == concept.Shape && g.Score.SeenColour == concept.ColourName) <= 1,
            string.Join("\n", generated.Select(g => g.Score.ToString())));
    }

    /// <summary>A build small enough for a unit test (seconds): every stage runs, nothing is learned.</summary>
    private static ToyBuildOptions TinyBuild => new()
    {
        Seed = 3, VaeSteps = 2, UNetSteps = 3, VaeBatch = 2, UNetBatch = 4, LatentImages = 8, EvaluationSeeds = 1, WarmupSteps = 2,
        EvaluationPrompts = ToyEvaluation.QuickPrompts().Take(2).ToList(),
        Vae = new AutoencoderKLConfig(BlockOutChannels: [8, 8, 8, 8], LayersPerBlock: 1, NormNumGroups: 4, SampleSize: 64),
        UNet = new UNetConfig(BlockOutChannels: [8, 16, 16, 16], LayersPerBlock: 1, NormNumGroups: 4, CrossAttentionDim: 8, AttentionHeadDim: [2, 2, 2, 2], SampleSize: 8),
        TextEncoder = new ClipTextConfig(HiddenSize: 8, IntermediateSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 2),
    };

    /// <summary>Whether two weight files hold the same tensors by value (a zero's sign may differ: -0 == 0).</summary>
    private static bool SameWeights(string a, string b)
    {
        using var x = Safetensors.Open(a);
        using var y = Safetensors.Open(b);
        if (!x.Keys.Order().SequenceEqual(y.Keys.Order())) return false;
        foreach (var key in x.Keys)
        {
            using var s = x.Load(key);
            using var t = y.Load(key);
            if (!s.allclose(t, rtol: 0, atol: 0)) return false;
        }
        return true;
    }

    /// <summary>
    /// --unet-from starts the UNet and text encoder from a built model: with learning rates too small to move a weight,
    /// the result is that model's UNet and text encoder exactly (a fresh start would be the seed's random weights). The
    /// offset noise is part of the objective: the same build without it trains other weights. Negative offsets are refused.
    /// </summary>
    [Fact]
    public void A_toy_build_can_start_its_UNet_from_a_built_model_and_uses_the_offset_noise_it_is_given()
    {
        using var dir = Fixtures.TempDir();
        var a = dir.File("a");
        new ToyModelBuilder(TinyBuild).Build(a);
        const string unet = "unet/diffusion_pytorch_model.safetensors", te = "text_encoder/model.safetensors";

        var still = TinyBuild with { VaeFrom = a, UNetFrom = a, UNetLearningRate = 1e-30, TextEncoderLearningRate = 1e-30, Seed = 4 };
        var progress = new List<ToyBuildProgress>();
        new ToyModelBuilder(still).Build(dir.File("from-a"), new SyncProgress<ToyBuildProgress>(progress.Add));
        // (Weight decay times a learning rate of 1e-30 moves nothing, but turns a -0 into +0: compared by value.)
        Assert.True(SameWeights(Path.Combine(a, unet), Path.Combine(dir.File("from-a"), unet)));
        Assert.True(SameWeights(Path.Combine(a, te), Path.Combine(dir.File("from-a"), te)));
        Assert.Contains(progress, p => p.Stage == "UNet" && p.Message.Contains(a));
        Assert.Contains("--vae-from from-a-base --unet-from from-a-base", File.ReadAllText(Path.Combine(dir.File("from-a"), "README.md")));
        new ToyModelBuilder(still with { UNetFrom = null }).Build(dir.File("fresh"));
        Assert.False(SameWeights(Path.Combine(a, unet), Path.Combine(dir.File("fresh"), unet)));

        new ToyModelBuilder(TinyBuild with { VaeFrom = a, NoiseOffset = 0.3 }).Build(dir.File("offset"));
        new ToyModelBuilder(TinyBuild with { VaeFrom = a }).Build(dir.File("no-offset"));
        Assert.False(SameWeights(Path.Combine(dir.File("offset"), unet), Path.Combine(dir.File("no-offset"), unet)));
        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.File("offset"), "toy_build.json"))))
            Assert.Equal(0.3, json.RootElement.GetProperty("noise_offset").GetDouble());
        Assert.Contains("--noise-offset 0.3", File.ReadAllText(Path.Combine(dir.File("offset"), "README.md")));

        // Trained further from a whole built model: the card gives both builds' commands, the first read from its record.
        new ToyModelBuilder(TinyBuild with { VaeFrom = a, UNetFrom = a, NoiseOffset = 0.3, UNetSteps = 2 }).Build(dir.File("continued"));
        var card = File.ReadAllText(Path.Combine(dir.File("continued"), "README.md"));
        Assert.Contains("sdlora toy build --out continued-base --seed 3 --vae-steps 2 --unet-steps 3 --unet-batch 4 --noise-offset 0 --threads", card);
        Assert.Contains("sdlora toy build --out continued --seed 3 --vae-from continued-base --unet-from continued-base --unet-steps 2 --unet-batch 4 --noise-offset 0.3 --threads", card);

        var e = Assert.Throws<SdLoraException>(() => (TinyBuild with { NoiseOffset = -0.1 }).Validate());
        Assert.Contains("--noise-offset -0.1", e.Message);
        Assert.Equal("--unet-batch 0: use at least 1 picture per step", Assert.Throws<SdLoraException>(() => (TinyBuild with { UNetBatch = 0 }).Validate()).Message);
        Assert.Equal("--unet-batch 9: use at most 8 (the pictures encoded for the UNet stage)", Assert.Throws<SdLoraException>(() => (TinyBuild with { UNetBatch = 9 }).Validate()).Message);
    }

    [Fact]
    public void A_toy_build_writes_a_diffusers_folder_with_its_card_and_repeats_exactly_with_the_same_seed()
    {
        using var dir = Fixtures.TempDir();
        var options = TinyBuild;
        var progress = new List<ToyBuildProgress>();
        var first = new ToyModelBuilder(options).Build(dir.File("a"), new SyncProgress<ToyBuildProgress>(progress.Add));
        Assert.Equal((2, 3), (first.VaeSteps, first.UNetSteps));
        Assert.Contains(progress, p => p.Stage == "VAE" && p.Step == 2 && p.Steps == 2 && double.IsFinite(p.Loss));
        Assert.Contains(progress, p => p.Stage == "UNet" && p.Step == 3 && p.Steps == 3);
        foreach (var f in new[] { "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                     "text_encoder/model.safetensors", "tokenizer/vocab.json", "scheduler/scheduler_config.json", "README.md", "samples.png", "toy_build.json" })
            Assert.True(File.Exists(Path.Combine(dir.File("a"), f)), f);
        using (var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.File("a"), "toy_build.json"))))
        {
            Assert.Equal(3, json.RootElement.GetProperty("unet_steps").GetInt32());
            Assert.Equal(2, json.RootElement.GetProperty("evaluation").GetProperty("Images").GetInt32());
        }
        var card = File.ReadAllText(Path.Combine(dir.File("a"), "README.md"));
        Assert.Contains("--seed 3 --vae-steps 2 --unet-steps 3", card);
        Assert.Contains("| all | 2 |", card);

        // Loads as any SD1.x diffusers folder; the VAE's scaling factor is the measured one.
        using (var model = StableDiffusionModel.Load(dir.File("a")))
            Assert.Equal(first.ScalingFactor, model.Vae.ScalingFactor, 5);

        new ToyModelBuilder(options).Build(dir.File("b"));
        foreach (var part in new[] { "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir.File("a"), part)), File.ReadAllBytes(Path.Combine(dir.File("b"), part)));
        Assert.DoesNotContain(Directory.GetDirectories(dir.Path), d => Path.GetFileName(d).StartsWith('.') || d.EndsWith(".vae"));

        // Stopped in the UNet stage: the partly trained model is written, the stage folder kept; run again, the build goes
        // on from the stop and ends with the same model as an uninterrupted one.
        using var stop = new CancellationTokenSource();
        var stopped = new ToyModelBuilder(options).Build(dir.File("c"), new SyncProgress<ToyBuildProgress>(p =>
        {
            if (p.Stage == "UNet" && p.Step == 1) stop.Cancel();
        }), stop.Token);
        Assert.True(stopped.StoppedEarly);
        Assert.True(File.Exists(Path.Combine(ToyModelBuilder.StageFolder(dir.File("c")), "unet_state.safetensors")));
        // The CLI lets "the same command again" replace this partly trained model without --overwrite; a finished build's folder
        // (a) or an unrelated one is still protected.
        Assert.True(ToyModelBuilder.HasStoppedBuild(dir.File("c")));
        Assert.False(ToyModelBuilder.HasStoppedBuild(dir.File("a")));
        Assert.False(ToyModelBuilder.HasStoppedBuild(dir.File("never-built")));
        var resumedProgress = new List<ToyBuildProgress>();
        var resumed = new ToyModelBuilder(options).Build(dir.File("c"), new SyncProgress<ToyBuildProgress>(resumedProgress.Add));
        Assert.False(resumed.StoppedEarly);
        Assert.DoesNotContain(resumedProgress, p => p.Stage == "VAE" && p.Step == 1); // the VAE was not trained again
        Assert.Contains(resumedProgress, p => p.Stage == "UNet" && p.Message.StartsWith("resuming"));
        foreach (var part in new[] { "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir.File("a"), part)), File.ReadAllBytes(Path.Combine(dir.File("c"), part)));
        Assert.False(Directory.Exists(ToyModelBuilder.StageFolder(dir.File("c"))));
        Assert.False(ToyModelBuilder.HasStoppedBuild(dir.File("c")));
    }
}

/// <summary>
/// How far from chance towards the renderer's own pictures the bundled toy model gets on the quick prompts (0 = chance,
/// 1 = as the renderer): below what it measured (see its card), so another CPU's arithmetic or seed does not fail the
/// check, and well above chance. Measured on the quick prompts (7 prompts x 2 seeds): shape 0.74 of the way, colour 0.47
/// (purple and blue are its weak colours: over all 35 base prompts it gets colours right 66 %), background 0.91, score 0.66.
/// </summary>
public static class ToyModelExpectations
{
    public const double ColourShare = 0.35;
    public const double BackgroundShare = 0.6;
    public const double ShapeShare = 0.4;
    public const double ScoreShare = 0.5;
}
