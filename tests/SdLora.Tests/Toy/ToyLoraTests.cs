using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Toy;
using SdLora.Training;
using Xunit;
using Xunit.Abstractions;

namespace SdLora.Tests.Toy;

/// <summary>LoRA training judged by what the model draws afterwards, on the bundled toy model.</summary>
public class ToyLoraTests(ITestOutputHelper output)
{
    /// <summary>
    /// The demo's recipe (DreamBooth-LoRA with prior preservation and the word's vectors trained beside it) on the teal
    /// heart. Measured on the bundled model (600 steps, AVX-512): concept score 0.41 -> 0.62 (2 threads; 1 thread: 0.62),
    /// heart drawn for 4 of 6 seeds (1 thread: 5), the class prompt's concept score 0.44 -> 0.47, base prompts' score
    /// 0.75 -> 0.69 with the LoRA on. Other training seeds: 7 gave 0.60, 1234 gave 0.53, hence the bounds below.
    /// </summary>
    [Fact]
    [Trait("Category", "Slow")]
    public void A_DreamBooth_LoRA_teaches_the_held_out_concept_and_leaves_the_base_concepts_drawn_as_before()
    {
        using var setup = new ToyConceptSetup();
        var config = setup.DemoConfig(ToyLoraExpectations.Steps) with { SaveEveryNEpochs = null };
        Assert.Equal(ToyDemo.Token, config.TokenString); // pivotal tuning: without it the LoRA cannot tell "sks shape" from "a shape"
        var result = new LoraTrainingSession(config, setup.Model).Run();
        Assert.NotNull(result.LoraPath);

        var (scores, baseAfter) = setup.MeasureAfter(setup.Model, result.LoraPath);
        output.WriteLine($"{scores}\nbase before {setup.BaseBefore}\nbase after  {baseAfter}");

        Assert.True(scores.ConceptAfter >= scores.ConceptBefore + ToyLoraExpectations.MinConceptGain, scores.ToString());
        Assert.True(scores.ConceptShapeRightAfter >= ToyLoraExpectations.MinConceptShapeRight, scores.ToString());
        // The base concepts stay (mostly): the LoRA is attached, yet "a red circle" is still a red circle.
        Assert.True(baseAfter.Overall >= setup.BaseBefore.Overall - ToyLoraExpectations.MaxBaseLoss, $"{setup.BaseBefore}\n{baseAfter}");
        // Prior preservation: the class prompt does not turn into the concept.
        Assert.True(scores.ClassConceptAfter <= scores.ClassConceptBefore + ToyLoraExpectations.MaxClassLeak, scores.ToString());
        setup.AssertModelUntouched();
    }
}

/// <summary>What a demo-sized LoRA measurably does on the bundled toy model (see its card), less a margin.</summary>
public static class ToyLoraExpectations
{
    public const int Steps = ToyDemo.DefaultSteps;
    public const double MinConceptGain = 0.08;
    public const double MinConceptShapeRight = 0.33;
    public const double MaxBaseLoss = 0.15;
    public const double MaxClassLeak = 0.15;
}
