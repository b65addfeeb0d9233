using SdLora.Cli.Commands;
using SdLora.IO;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

[Collection(SerialTrainingCollection.Name)]
public class DemoTests
{
    [Fact]
    [Trait("Category", "Slow")]
    public void Demo_makes_class_images_lora_loss_plot_and_samples_and_reruns_over_itself()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("sdlora-demo");
        // A class-image cache of this test's own: the user's cache may already hold the tiny model's class images.
        var config = DemoCommand.Config(output, steps: 4, assetsDir: Path.Combine(Fixtures.RepoRoot, "assets")) with { ClassImageCache = dir.File("cache") };
        var r = new DreamBoothLoraTrainer(config).Train();
        Assert.Equal(4, r.ClassImagesGenerated);
        Assert.Equal(4, ClassImageFolder.CountExisting(Path.Combine(output, "class_images")));
        Assert.True(File.Exists(Path.Combine(output, DemoCommand.DemoOutputName + ".safetensors")));
        Assert.True(File.Exists(Path.Combine(output, "loss.png")));
        Assert.Equal(2, r.Samples.Count);
        Assert.All(r.Samples, s => Assert.True(File.Exists(s)));
        using (var lora = SafetensorsFile.Open(r.LoraPath!))
        {
            Assert.Equal("4", lora.Metadata["ss_steps"]);
            Assert.Equal("5", lora.Metadata["ss_num_train_images"]);
            Assert.Contains(lora.Keys, k => k.StartsWith("lora_te_"));
        }

        // A second demo replaces the first (and reuses its class images).
        var again = DemoCommand.Config(output, steps: 2, assetsDir: Path.Combine(Fixtures.RepoRoot, "assets")) with { ClassImageCache = dir.File("cache") };
        Assert.True(again.Overwrite);
        var r2 = new DreamBoothLoraTrainer(again).Train();
        Assert.Equal(0, r2.ClassImagesGenerated);
        Assert.Equal(2, r2.Steps);
    }
}
