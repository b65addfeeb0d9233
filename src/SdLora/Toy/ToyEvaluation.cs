using SdLora.Imaging;
using SdLora.Pipelines;

namespace SdLora.Toy;

/// <summary>One generated picture and its score.</summary>
public sealed record ToyGenerated(string Prompt, long Seed, RgbImage Image, ToyScore Score);

/// <summary>Scores of a set of generated pictures: means of each part and how often the seen shape/colour/background is the asked one.</summary>
public sealed record ToySummary(int Images, double Overall, double Shape, double Colour, double Background,
    double ShapeAccuracy, double ColourAccuracy, double BackgroundAccuracy)
{
    public static ToySummary Of(IReadOnlyCollection<ToyGenerated> items, ToyPrompt? fixedTarget = null)
    {
        if (items.Count == 0) return new ToySummary(0, 0, 0, 0, 0, 0, 0, 0);
        ToyPrompt Target(ToyGenerated g) => fixedTarget ?? ToyPrompt.Parse(g.Prompt);
        double Mean(Func<ToyGenerated, double?> f) => items.Select(f).Where(v => v is not null).Select(v => v!.Value).DefaultIfEmpty(double.NaN).Average();
        return new ToySummary(items.Count, Mean(g => g.Score.Overall), Mean(g => g.Score.Shape), Mean(g => g.Score.Colour), Mean(g => g.Score.Background),
            Mean(g => Target(g).Shape is { } s ? (g.Score.SeenShape == s ? 1 : 0) : null),
            Mean(g => Target(g).Colour is { } c ? (g.Score.SeenColour == c.Name ? 1 : 0) : null),
            Mean(g => Target(g).Background is { } b ? (g.Score.SeenBackground == b.Name ? 1 : 0) : null));
    }
}

/// <summary>
/// Generates pictures of toy-world prompts with a model and scores them with <see cref="ToyScorer"/> (no model in the
/// measurement). The sampling settings are the toy model's recommended ones.
/// </summary>
public static class ToyEvaluation
{
    public const string Sampler = "DDIM";
    public const int Steps = 20;
    public const double CfgScale = 5;

    /// <summary>
    /// The base concepts as prompts: every shape in every colour, each on a background chosen in turn among those that
    /// differ from the colour ("a red circle on a black background", ...).
    /// </summary>
    public static IReadOnlyList<string> BasePrompts()
    {
        var prompts = new List<string>();
        int k = 0;
        foreach (var shape in ToyWorld.Shapes)
            foreach (var colour in ToyWorld.Colours)
            {
                var bgs = ToyWorld.Backgrounds.Where(b => b.Name != colour.Name).ToList();
                var bg = bgs[k++ % bgs.Count];
                prompts.Add($"{ToyWorld.Article(colour.Name)} {colour.Name} {shape} on {ToyWorld.Article(bg.Name)} {bg.Name} background");
            }
        return prompts;
    }

    /// <summary>
    /// A smaller set naming each base shape, colour and background at least once (for quick checks): shape i in colour
    /// i, and so on round the lists.
    /// </summary>
    public static IReadOnlyList<string> QuickPrompts()
    {
        var prompts = new List<string>();
        int n = Math.Max(ToyWorld.Shapes.Count, ToyWorld.Colours.Count);
        for (int i = 0; i < n; i++)
        {
            var shape = ToyWorld.Shapes[i % ToyWorld.Shapes.Count];
            var colour = ToyWorld.Colours[i % ToyWorld.Colours.Count];
            var bgs = ToyWorld.Backgrounds.Where(b => b.Name != colour.Name).ToList();
            var bg = bgs[i % bgs.Count];
            prompts.Add($"{ToyWorld.Article(colour.Name)} {colour.Name} {shape} on {ToyWorld.Article(bg.Name)} {bg.Name} background");
        }
        return prompts;
    }

    /// <summary>
    /// Generates <paramref name="seedsPerPrompt"/> pictures of each prompt (seeds <paramref name="seed"/>, +1, ...) and
    /// scores each against <paramref name="target"/>, or against what its own prompt names. Only the given
    /// <paramref name="embeddings"/> (and a LoRA's own words) are used, never an embeddings folder.
    /// </summary>
    public static List<ToyGenerated> Generate(StableDiffusionModel model, IEnumerable<string> prompts, int seedsPerPrompt, long seed,
        ToyPrompt? target = null, IReadOnlyList<Lora.LoraUse>? loras = null, CancellationToken ct = default,
        IReadOnlyList<Text.TextualInversionEmbedding>? embeddings = null)
    {
        var pipeline = new Txt2ImgPipeline(model);
        var results = new List<ToyGenerated>();
        foreach (var prompt in prompts)
        {
            ct.ThrowIfCancellationRequested();
            var r = pipeline.Generate(new Txt2ImgOptions
            {
                Prompt = prompt, Width = ToyWorld.ImageSize, Height = ToyWorld.ImageSize, Steps = Steps, Sampler = Sampler,
                CfgScale = CfgScale, Seed = seed, BatchSize = seedsPerPrompt, Loras = loras ?? [],
                EmbeddingsDir = null, Embeddings = embeddings ?? [],
            }, null, ct);
            if (r.Cancelled) throw new OperationCanceledException(ct);
            var t = target ?? ToyPrompt.Parse(prompt);
            results.AddRange(r.Images.Select(i => new ToyGenerated(prompt, i.Seed, i.Image, ToyScorer.Score(i.Image, t))));
        }
        return results;
    }
}
