using SdLora.Pipelines;
using SdLora.Toy;
using SdLora.Training;
using Xunit;
using Xunit.Abstractions;

namespace SdLora.Tests.Toy;

/// <summary>Full DreamBooth (every UNet and text-encoder weight trained) judged by what the fine-tuned toy model draws.</summary>
public class ToyDreamBoothTests(ITestOutputHelper output)
{
    /// <summary>
    /// 400 steps on the demo's teal heart ("a photo of sks shape", prior preservation on 12 class pictures of "a photo
    /// of a shape"), UNet and text encoder at 3e-4. Measured on the bundled model (2 threads, AVX-512): "a sks shape"
    /// 0.41 -> 0.55, a heart for 2 of 6 seeds (none before); the class prompt's concept score 0.44 -> 0.49; the base
    /// prompts 0.75 -> 0.74. The learning rate is the narrow part: UNet 2e-4 with the text encoder at 5e-4 gave 0.49, a
    /// text encoder at 1e-3 broke the base prompts' backgrounds (0.75 -> 0.49); see the toy model's card.
    /// </summary>
    [Fact]
    [Trait("Category", "Slow")]
    public void Full_DreamBooth_teaches_the_held_out_concept_and_keeps_the_base_concepts()
    {
        using var setup = new ToyConceptSetup();
        var config = setup.DemoConfig(400) with
        {
            Method = TrainingConfig.MethodDreamBooth, LearningRate = 3e-4, TrainTextEncoder = true, TextEncoderLr = 3e-4,
            TokenString = null, InitWord = null, EmbeddingLr = null, SaveEveryNEpochs = null,
        };
        var result = new DreamBoothTrainingSession(config, setup.Model).Run();
        Assert.True(Directory.Exists(result.OutputFile), result.OutputFile); // a diffusers folder in, a diffusers folder out

        using var tuned = StableDiffusionModel.Load(result.OutputFile!);
        var (scores, baseAfter) = setup.MeasureAfter(tuned);
        output.WriteLine($"{scores}\nbase before {setup.BaseBefore}\nbase after  {baseAfter}");

        Assert.True(scores.ConceptAfter >= scores.ConceptBefore + 0.07, scores.ToString());
        Assert.True(scores.ConceptShapeRightAfter >= 1 / 6.0, scores.ToString()); // at least one heart where there were none
        Assert.True(baseAfter.Overall >= setup.BaseBefore.Overall - 0.10, $"{setup.BaseBefore}\n{baseAfter}");
        Assert.True(scores.ClassConceptAfter <= scores.ClassConceptBefore + 0.10, scores.ToString());
        setup.AssertModelUntouched(); // the lent model is given back with its own weights
    }
}
