using SdLora.Checkpoints;
using SdLora.IO;
using SdLora.Pipelines;
using SdLora.Text;
using SdLora.Training;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

public class MethodTrainingTests(ITestOutputHelper output)
{
    private static TrainingConfig DreamBooth(TempDir dir, int images, int steps, string outputName = "out") =>
        TrainerTests.TinyRun(dir, images, steps, outputName).WithMethod(TrainingConfig.MethodDreamBooth) with { OutputName = "sks", LearningRate = 1e-4 };

    private static TrainingConfig Inversion(TempDir dir, int images, int steps, string outputName = "out") =>
        TrainerTests.TinyRun(dir, images, steps, outputName).WithMethod(TrainingConfig.MethodTextualInversion) with
        {
            OutputName = null, TokenString = "sks", InitWord = "dog", NumVectorsPerToken = 2, LearningRate = 1e-2,
        };

    [Fact]
    [Trait("Category", "Slow")]
    public void Dreambooth_lowers_the_loss_and_moves_generations_toward_the_instance_image()
    {
        using var dir = Fixtures.TempDir();
        var config = DreamBooth(dir, 1, 20) with { LearningRate = 2e-3 };
        var result = new DreamBoothTrainingSession(config).Run();

        using var baseModel = StableDiffusionModel.Load(config.Model!);
        using var tuned = StableDiffusionModel.Load(result.OutputFile!);
        using var probe = new ConceptProbe(baseModel, Directory.GetFiles(config.Data!).Single());
        using var context = ConceptProbe.Context(baseModel, config.InstancePrompt!);
        var before = probe.Measure(baseModel, context);
        var after = probe.Measure(tuned, context);
        output.WriteLine($"loss {before.Loss:F4} -> {after.Loss:F4}, mse {before.Mse:F4} -> {after.Mse:F4}");
        Assert.True(after.Loss < 0.8 * before.Loss, $"eval loss {before.Loss:F4} -> {after.Loss:F4}");
        Assert.True(after.Mse < 0.8 * before.Mse, $"generated latent MSE to the training image {before.Mse:F4} -> {after.Mse:F4}");
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Textual_inversion_lowers_the_loss_and_moves_generations_toward_the_instance_image()
    {
        using var dir = Fixtures.TempDir();
        var config = Inversion(dir, 1, 20) with { LearningRate = 5e-2 };
        var result = new TextualInversionTrainingSession(config).Run();

        using var model = StableDiffusionModel.Load(config.Model!);
        using var probe = new ConceptProbe(model, Directory.GetFiles(config.Data!).Single());
        using var trained = TextualInversionEmbedding.Read(result.OutputFile!);
        using var dog = model.TextEncoder.text_model.embeddings.token_embedding.weight![model.Tokenizer.Encode("dog")[0]].unsqueeze(0).expand(2, -1);
        using var untrained = new TextualInversionEmbedding("sks", dog);
        Tensor Context(TextualInversionEmbedding e)
        {
            using var library = new EmbeddingLibrary(null, [e]);
            var encoder = new PromptEncoder(model.Tokenizer, model.TextEncoder)
            {
                Embeddings = new PromptEmbeddings(library, model.Tokenizer, model.TextEncoder.Config.VocabSize, model.TextEncoder.Config.HiddenSize),
            };
            using var encoding = encoder.Encode(config.InstancePrompt!);
            return encoding.Conditioning.clone();
        }
        using var contextBefore = Context(untrained);
        using var contextAfter = Context(trained);
        var before = probe.Measure(model, contextBefore);
        var after = probe.Measure(model, contextAfter);
        output.WriteLine($"loss {before.Loss:F4} -> {after.Loss:F4}, mse {before.Mse:F4} -> {after.Mse:F4}");
        Assert.True(after.Loss < 0.8 * before.Loss, $"eval loss {before.Loss:F4} -> {after.Loss:F4}");
        Assert.True(after.Mse < 0.8 * before.Mse, $"generated latent MSE to the training image {before.Mse:F4} -> {after.Mse:F4}");
    }
}
