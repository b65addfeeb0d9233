using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Toy;
using SdLora.Training;

namespace SdLora.Tests.Toy;

/// <summary>
/// The demo's setting for a test that teaches the toy model its held-out concept: the instance pictures written, the
/// bundled model loaded, and what it draws before training (the demo's prompts and the quick base prompts).
/// </summary>
internal sealed class ToyConceptSetup : IDisposable
{
    public TempDir Dir { get; } = Fixtures.TempDir();
    public ToyDemo Demo { get; } = new();
    public StableDiffusionModel Model { get; }
    public ToyDemoSnapshot Before { get; }
    public ToySummary BaseBefore { get; }

    public ToyConceptSetup()
    {
        Demo.WriteInstanceImages(Dir.File("instances"));
        Model = StableDiffusionModel.Load(ToyModelTests.BundledModel);
        Before = Demo.Snapshot(Model, null);
        BaseBefore = ToySummary.Of(ToyEvaluation.Generate(Model, ToyEvaluation.QuickPrompts(), 1, 1000));
    }

    /// <summary>The demo's training settings (DreamBooth-LoRA with pivotal tuning) for <paramref name="steps"/> steps, into the temp folder.</summary>
    public TrainingConfig DemoConfig(int steps) => Demo.TrainingConfig(ToyModelTests.BundledModel, Dir.File("instances"), Dir.File("run"), steps, overwrite: false);

    /// <summary>
    /// What <paramref name="model"/> draws after training (with <paramref name="lora"/> attached when given), measured
    /// against <see cref="Before"/>: the demo's scores, and the quick base prompts' summary.
    /// </summary>
    public (ToyDemoScores Scores, ToySummary BaseAfter) MeasureAfter(StableDiffusionModel model, string? lora = null)
    {
        var after = Demo.Snapshot(model, lora);
        IReadOnlyList<LoraUse> loras = lora is null ? [] : [new LoraUse(lora)];
        var baseAfter = ToySummary.Of(ToyEvaluation.Generate(model, ToyEvaluation.QuickPrompts(), 1, 1000, loras: loras));
        return (ToyDemo.Measure(Before, after, Demo.Concept), baseAfter);
    }

    /// <summary>What the bundled model draws now for the demo's prompts: the lent model must come back untouched.</summary>
    public void AssertModelUntouched() =>
        Xunit.Assert.Equal(Before.Concept[0].Image.Pixels, Demo.Snapshot(Model, null).Concept[0].Image.Pixels);

    public void Dispose()
    {
        Model.Dispose();
        Dir.Dispose();
    }
}
