using System.Text.Json;
using SdLora.IO;
using SdLora.Models;
using SdLora.Pipelines;
using SdLora.Toy;
using Xunit;
using Xunit.Abstractions;

namespace SdLora.Tests.Toy;

public class ToyModelTests(ITestOutputHelper output)
{
    public static string BundledModel => Path.Combine(Fixtures.RepoRoot, "assets", "toy-shapes");

    [Fact(Skip = "not done (issue 13): the bundled toy model does not follow its prompts yet; measured on these prompts: score 0.41, " +
                 "shape right 14 %, colour 36 %, background 29 % (its card: 0.37 on all base prompts). Its VAE loses colours and " +
                 "backgrounds (reconstructions: colour right 38 %, background 44 %), so this check waits for a better build.")]
    public void The_bundled_toy_model_draws_each_base_shape_colour_and_background_from_its_prompt()
    {
        using var model = StableDiffusionModel.Load(BundledModel);
        var generated = ToyEvaluation.Generate(model, ToyEvaluation.QuickPrompts(), 2, 1000);
        var s = ToySummary.Of(generated);
        // Its VAE halves twice (16x16 latents): pictures still come out at the asked size.
        Assert.All(generated, g => Assert.Equal((ToyWorld.ImageSize, ToyWorld.ImageSize), (g.Image.Width, g.Image.Height)));
        foreach (var g in generated) output.WriteLine($"{g.Prompt} seed {g.Seed}: {g.Score}");
        output.WriteLine(s.ToString());
        // The bundled model's measured quality (README.md card), with a margin for other CPUs' arithmetic.
        Assert.True(s.Overall >= ToyModelExpectations.MinScore, s.ToString());
        Assert.True(s.ColourAccuracy >= ToyModelExpectations.MinColourAccuracy, s.ToString());
        Assert.True(s.BackgroundAccuracy >= ToyModelExpectations.MinBackgroundAccuracy, s.ToString());
        Assert.True(s.ShapeAccuracy >= ToyModelExpectations.MinShapeAccuracy, s.ToString());
        // Far above what the renderer's pictures of unrelated prompts score against the same prompts.
        var shuffled = generated.Select((g, i) => ToyScorer.Score(generated[(i + 3) % generated.Count].Image, ToyPrompt.Parse(g.Prompt)).Overall).Average();
        Assert.True(s.Overall > shuffled + 0.2, $"matched {s.Overall:F2}, mismatched {shuffled:F2}");
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

    [Fact]
    public void A_toy_build_writes_a_diffusers_folder_with_its_card_and_repeats_exactly_with_the_same_seed()
    {
        using var dir = Fixtures.TempDir();
        var options = new ToyBuildOptions
        {
            Seed = 3, VaeSteps = 2, UNetSteps = 3, VaeBatch = 2, UNetBatch = 4, LatentImages = 8, EvaluationSeeds = 1, WarmupSteps = 2,
            EvaluationPrompts = ToyEvaluation.QuickPrompts().Take(2).ToList(),
            Vae = new AutoencoderKLConfig(BlockOutChannels: [8, 8, 8, 8], LayersPerBlock: 1, NormNumGroups: 4, SampleSize: 64),
            UNet = new UNetConfig(BlockOutChannels: [8, 16, 16, 16], LayersPerBlock: 1, NormNumGroups: 4, CrossAttentionDim: 8, AttentionHeadDim: [2, 2, 2, 2], SampleSize: 8),
            TextEncoder = new ClipTextConfig(HiddenSize: 8, IntermediateSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 2),
        };
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
        var resumedProgress = new List<ToyBuildProgress>();
        var resumed = new ToyModelBuilder(options).Build(dir.File("c"), new SyncProgress<ToyBuildProgress>(resumedProgress.Add));
        Assert.False(resumed.StoppedEarly);
        Assert.DoesNotContain(resumedProgress, p => p.Stage == "VAE" && p.Step == 1); // the VAE was not trained again
        Assert.Contains(resumedProgress, p => p.Stage == "UNet" && p.Message.StartsWith("resuming"));
        foreach (var part in new[] { "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir.File("a"), part)), File.ReadAllBytes(Path.Combine(dir.File("c"), part)));
        Assert.False(Directory.Exists(ToyModelBuilder.StageFolder(dir.File("c"))));
    }
}

/// <summary>What the bundled toy model measurably does (see assets/toy-shapes/README.md), less a margin.</summary>
public static class ToyModelExpectations
{
    public const double MinScore = 0.5;
    public const double MinShapeAccuracy = 0.3;
    public const double MinColourAccuracy = 0.5;
    public const double MinBackgroundAccuracy = 0.5;
}
