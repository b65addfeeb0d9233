using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class PriorLossWeightTests
{
    /// <summary>
    /// One batch of one instance and one class image: the first step's loss (LoRA up-weights start at zero, noise and
    /// timesteps come from the seed) is <c>(l_instance + w * l_class) / 2</c>. Runs at w = 0, 1 and 3 must lie on that
    /// line, with a class term that is not zero, so a trainer that ignored the setting fails.
    /// </summary>
    [Fact]
    public void Prior_loss_weight_scales_the_class_images_share_of_the_loss()
    {
        using var dir = Fixtures.TempDir();
        var cls = dir.File("class");
        TrainingTestData.WritePng(Path.Combine(cls, "c0.png"), 64, 64, shade: 90);
        double FirstLoss(double weight)
        {
            var config = TrainerTests.TinyRun(dir, 1, 1, $"w{weight}") with
            {
                ClassPrompt = "a photo of dog", ClassData = cls, NumClassImages = 1, PriorLossWeight = weight,
                TrainBatchSize = 2, EnableBucket = false,
            };
            var result = new LoraTrainingSession(config).Run();
            Assert.Equal(0, result.ClassImagesGenerated);
            return Assert.Single(LossLog.Read(result.LossCsv)).Loss;
        }
        double l0 = FirstLoss(0), l1 = FirstLoss(1), l3 = FirstLoss(3);
        double classTerm = l1 - l0; // = l_class / 2
        Assert.True(classTerm > 1e-4 * l1, $"precondition: the class image adds to the loss ({l0} -> {l1})");
        Assert.Equal(l0 + 3 * classTerm, l3, 1e-5 * Math.Max(1, l3));
    }
}
