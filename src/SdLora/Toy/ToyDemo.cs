using System.Text.Json;
using System.Text.Json.Serialization;
using SdLora.Imaging;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Training;

namespace SdLora.Toy;

/// <summary>Pictures of the demo's two prompts for its seeds, with their scores against the taught concept.</summary>
public sealed record ToyDemoSnapshot(IReadOnlyList<ToyGenerated> Concept, IReadOnlyList<ToyGenerated> Class);

/// <summary>What the demo measured (all scores in [0, 1]).</summary>
public sealed record ToyDemoScores(
    [property: JsonPropertyName("concept_score_before")] double ConceptBefore,
    [property: JsonPropertyName("concept_score_after")] double ConceptAfter,
    [property: JsonPropertyName("concept_shape_right_before")] double ConceptShapeRightBefore,
    [property: JsonPropertyName("concept_shape_right_after")] double ConceptShapeRightAfter,
    [property: JsonPropertyName("class_concept_score_before")] double ClassConceptBefore,
    [property: JsonPropertyName("class_concept_score_after")] double ClassConceptAfter,
    [property: JsonPropertyName("class_drift")] double ClassDrift);

/// <summary>
/// The DreamBooth-LoRA demo on the toy model: teach the held-out <see cref="Concept"/> as "a photo of sks shape" from a
/// few rendered pictures, with prior preservation on "a photo of a shape", and show and measure the change: the base
/// model's "a sks shape" before and after (same seeds), and the class prompt before and after (it should not change).
/// </summary>
public sealed class ToyDemo
{
    public const string Token = "sks";
    public const string OutputName = "sks-shape-demo";
    public const int InstanceImages = 6;
    /// <summary>Training steps of the toy demo (measured on the bundled model: see its card).</summary>
    public const int DefaultSteps = 600;

    public ToyConcept Concept { get; }
    public string InstancePrompt => $"a photo of {Token} {ToyWorld.ClassWord}";
    public string ClassPrompt => $"a photo of a {ToyWorld.ClassWord}";
    /// <summary>What the before/after pictures ask for: the token in a prompt unlike the training caption.</summary>
    public string ConceptPrompt => $"a {Token} {ToyWorld.ClassWord}";
    public IReadOnlyList<long> Seeds { get; } = [1, 2, 3, 4, 5, 6];

    public ToyDemo(ToyConcept? concept = null) => Concept = concept ?? ToyWorld.DemoConcept;

    /// <summary>The held-out concept as the scorer checks it (its shape and colour).</summary>
    public ToyPrompt Target => Concept.Target;

    /// <summary>Renders the instance pictures into <paramref name="folder"/> (no caption files: the instance prompt is their caption).</summary>
    public IReadOnlyList<string> WriteInstanceImages(string folder) => ToyDataset.Write(folder, Concept, null, InstanceImages, seed: 1);

    /// <summary>
    /// The demo's training: DreamBooth-LoRA with prior preservation at 64 px, with the token's vectors trained beside the
    /// LoRA (pivotal tuning, starting from the class word): the toy text encoder maps "sks shape" almost onto "a shape",
    /// and a LoRA alone measurably could not pull them apart (see the model card). Class images are made by the base
    /// model itself into <c>OUTPUT/class_images</c>.
    /// </summary>
    public TrainingConfig TrainingConfig(string model, string instanceFolder, string output, int steps, bool overwrite) => new()
    {
        Model = model, Data = instanceFolder, Output = output, OutputName = OutputName, Overwrite = overwrite,
        InstancePrompt = InstancePrompt, ClassPrompt = ClassPrompt, NumClassImages = 12, NumRepeats = 1, PriorLossWeight = 1.0,
        Resolution = Resolution.Square(ToyWorld.ImageSize), MinBucketReso = ToyWorld.ImageSize, MaxBucketReso = ToyWorld.ImageSize,
        BucketResoSteps = ToyWorld.ImageSize, TrainBatchSize = 2, MaxTrainSteps = steps, NetworkDim = 8, NetworkAlpha = 8,
        LearningRate = 2e-3, TextEncoderLr = 5e-4, Seed = 42,
        TokenString = Token, InitWord = ToyWorld.ClassWord, EmbeddingLr = Training.TrainingConfig.DefaultEmbeddingLr,
    };

    /// <summary>The demo's pictures of both prompts for <see cref="Seeds"/>, with <paramref name="lora"/> attached when given.</summary>
    public ToyDemoSnapshot Snapshot(StableDiffusionModel model, string? lora, CancellationToken ct = default)
    {
        IReadOnlyList<LoraUse> loras = lora is null ? [] : [new LoraUse(lora)];
        var concept = Seeds.SelectMany(s => ToyEvaluation.Generate(model, [ConceptPrompt], 1, s, Target, loras, ct)).ToList();
        var cls = Seeds.SelectMany(s => ToyEvaluation.Generate(model, [ClassPrompt], 1, s, Target, loras, ct)).ToList();
        return new ToyDemoSnapshot(concept, cls);
    }

    public static ToyDemoScores Measure(ToyDemoSnapshot before, ToyDemoSnapshot after, ToyConcept concept)
    {
        double ShapeRight(IReadOnlyList<ToyGenerated> g) => g.Average(x => x.Score.SeenShape == concept.Shape ? 1.0 : 0.0);
        double drift = before.Class.Zip(after.Class, (b, a) => b.Image.Pixels.Zip(a.Image.Pixels, (p, q) => Math.Abs(p - q) / 255.0).Average()).Average();
        return new ToyDemoScores(before.Concept.Average(g => g.Score.Overall), after.Concept.Average(g => g.Score.Overall),
            ShapeRight(before.Concept), ShapeRight(after.Concept),
            before.Class.Average(g => g.Score.Overall), after.Class.Average(g => g.Score.Overall), drift);
    }

    /// <summary>One sheet: the instance pictures, then each prompt before and after training, each picture's concept score under it.</summary>
    public RgbImage ContactSheet(IReadOnlyList<string> instanceImages, ToyDemoSnapshot before, ToyDemoSnapshot after, int steps)
    {
        static List<string> Captions(IEnumerable<ToyGenerated> g) => g.Select(x => $"seed {x.Seed}: {x.Score.Overall:F2}").ToList();
        var instances = instanceImages.Select(p => RgbImage.Load(p)).ToList();
        var rows = new List<ContactSheetRow>
        {
            new($"instance pictures: \"{InstancePrompt}\" ({Concept.ColourName} {Concept.Shape})", instances),
            new($"before: \"{ConceptPrompt}\"", before.Concept.Select(g => g.Image).ToList(), Captions(before.Concept)),
            new($"after {steps} steps: \"{ConceptPrompt}\"", after.Concept.Select(g => g.Image).ToList(), Captions(after.Concept)),
            new($"before: \"{ClassPrompt}\" (class prior)", before.Class.Select(g => g.Image).ToList(), Captions(before.Class)),
            new($"after: \"{ClassPrompt}\" (should stay the same)", after.Class.Select(g => g.Image).ToList(), Captions(after.Class)),
        };
        return Imaging.ContactSheet.Render($"sdlora demo: DreamBooth-LoRA teaches the toy model \"{Token} {ToyWorld.ClassWord}\" (scores: match with the {Concept.ColourName} {Concept.Shape}, 0-1)", rows, 96, 300);
    }

    /// <summary>demo.json: everything needed to re-check the demo (paths, prompts, seeds, settings, scores).</summary>
    public string ReportJson(string model, string lora, string instanceFolder, string classFolder, string contactSheet, string? lossPlot,
        int steps, ToyDemoScores scores) => JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["instance_prompt"] = InstancePrompt,
            ["class_prompt"] = ClassPrompt,
            ["concept_prompt"] = ConceptPrompt,
            ["concept"] = new { name = Concept.Name, shape = Concept.Shape, colour = Concept.ColourName },
            ["model"] = model,
            ["lora"] = lora,
            ["token"] = Token,
            ["embedding"] = LoraEmbeddings.FileBeside(lora, Token),
            ["instance_images"] = instanceFolder,
            ["class_images"] = classFolder,
            ["contact_sheet"] = contactSheet,
            ["loss_plot"] = lossPlot,
            ["seeds"] = Seeds,
            ["sampler"] = ToyEvaluation.Sampler,
            ["sampling_steps"] = ToyEvaluation.Steps,
            ["cfg_scale"] = ToyEvaluation.CfgScale,
            ["size"] = ToyWorld.ImageSize,
            ["train_steps"] = steps,
            ["scores"] = scores,
            ["recheck"] = $"sdlora toy score {Path.Combine(Path.GetDirectoryName(contactSheet) ?? ".", "after", "concept")} --prompt \"{ConceptPrompt}\" --concept {Concept.Name}",
        }, new JsonSerializerOptions { WriteIndented = true }) + "\n";

    /// <summary>Saves the pictures as PNGs (<c>FOLDER/concept/seed1.png</c>, <c>FOLDER/class/seed1.png</c>, ...) so the scores can be re-checked.</summary>
    public static void SavePictures(string folder, ToyDemoSnapshot snapshot)
    {
        foreach (var (part, items) in new[] { ("concept", snapshot.Concept), ("class", snapshot.Class) })
        {
            Directory.CreateDirectory(Path.Combine(folder, part));
            foreach (var g in items) PngFile.Write(Path.Combine(folder, part, $"seed{g.Seed}.png"), g.Image);
        }
    }
}
