using SdLora.Imaging;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Models;
using SdLora.Pipelines;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

public class TrainingSessionTests
{
    private static TrainingConfig TinyRun(TempDir dir, int images, int steps, string output = "out") => TrainerTests.TinyRun(dir, images, steps, output);

    private static int AttachedAdapters(StableDiffusionModel model) =>
        new nn.Module[] { model.UNet, model.TextEncoder, model.Vae }.SelectMany(m => m.modules()).Sum(m => m switch
        {
            AdaptableLinear l => l.Adapters.Count,
            AdaptableConv2d c => c.Adapters.Count,
            _ => 0,
        });

    private static Tensor UNetOutput(StableDiffusionModel model)
    {
        using var noGrad = torch.no_grad();
        using var g = new Generator(11, CPU);
        var x = torch.randn([1, 4, 8, 8], generator: g);
        var context = torch.randn([1, 77, model.TextEncoder.Config.HiddenSize], generator: g);
        return model.UNet.forward(x, torch.tensor(new long[] { 500 }), context);
    }

    [Fact]
    public void Lent_model_is_trained_on_and_given_back_exactly_as_it_was()
    {
        using var dir = Fixtures.TempDir();
        using var model = StableDiffusionModel.Load(Fixtures.CopiedSet("tiny-sd15"));
        using var before = UNetOutput(model);
        var config = TinyRun(dir, 1, 2) with { Model = null, GradientCheckpointing = true };

        var result = new LoraTrainingSession(config, model).Run();

        Assert.Equal(2, result.Steps);
        Assert.True(File.Exists(result.LoraPath));
        Assert.Equal(0, AttachedAdapters(model));
        Assert.False(model.UNet.training);
        Assert.False(model.TextEncoder.training);
        Assert.False(model.UNet.GradientCheckpointing);
        using var after = UNetOutput(model); // not disposed, and computing exactly what it did
        Assert.True(torch.equal(before, after).all().item<bool>(), "the lent model's output changed");
        using (var lora = SafetensorsFile.Open(result.LoraPath!))
            Assert.Equal("tiny-sd15", lora.Metadata["ss_sd_model_name"]);

        // A run that fails half-way gives the model back just the same.
        var diverging = TinyRun(dir, 1, 4, "diverging") with { Model = null, Optimizer = "Lion", LearningRate = 1e30, TextEncoderLr = 1e30, MaxGradNorm = 0 };
        Assert.Throws<SdLoraException>(() => new LoraTrainingSession(diverging, model).Run());
        Assert.Equal(0, AttachedAdapters(model));
        using var afterFailure = UNetOutput(model);
        Assert.True(torch.equal(before, afterFailure).all().item<bool>(), "the lent model's output changed after a failed run");
    }

    [Fact]
    public void Run_that_failed_on_bad_data_leaves_a_folder_the_next_run_reuses()
    {
        using var dir = Fixtures.TempDir();
        var good = TinyRun(dir, 1, 1);
        var bad = good with { Data = dir.File("no-such-folder") };
        var e = Assert.Throws<SdLoraException>(() => new DreamBoothLoraTrainer(bad).Train());
        Assert.StartsWith("data ", e.Message);

        var result = new DreamBoothLoraTrainer(good).Train(); // no overwrite needed
        Assert.Equal(1, result.Steps);
        Assert.True(File.Exists(result.LoraPath));
    }

    [Fact]
    public void Cancel_during_class_images_keeps_them_and_the_folder_stays_usable_and_progress_shows_an_eta()
    {
        using var dir = Fixtures.TempDir();
        var config = TinyRun(dir, 1, 1) with { ClassPrompt = "a photo of a dog", NumClassImages = 3 };
        using var cts = new CancellationTokenSource();
        var reports = new List<TrainingProgress>();
        var progress = new SyncProgress<TrainingProgress>(p =>
        {
            reports.Add(p);
            if (p.Phase == TrainingPhase.ClassImages && p.Done == 2) cts.Cancel();
        });
        Assert.ThrowsAny<OperationCanceledException>(() => new LoraTrainingSession(config).Run(progress, cts.Token));
        var classDir = Path.Combine(config.Output!, "class_images");
        Assert.Equal(2, ClassImageFolder.CountExisting(classDir));
        // The report as the first image is done (later ones with Done == 1 are the second image's per-step progress).
        var second = reports.First(r => r.Phase == TrainingPhase.ClassImages && r.Done == 1);
        Assert.True(second.StepsPerSecond > 0);
        Assert.True(second.Eta > TimeSpan.Zero, "class-image progress carries an ETA");
        Assert.Equal(3, second.Total);

        var result = new LoraTrainingSession(config).Run(); // same folder, no overwrite, no resume
        Assert.Equal(1, result.ClassImagesGenerated);
        Assert.Equal(3, ClassImageFolder.CountExisting(classDir));
    }

    [Fact]
    public void Save_last_n_epochs_keeps_only_the_newest_epoch_files()
    {
        using var dir = Fixtures.TempDir();
        // 1 image, 1 repeat: one step per epoch, 5 epochs; epochs 1-4 are saved as epoch files, 5 is the final LoRA.
        var config = TinyRun(dir, 1, 5) with { SaveEveryNEpochs = 1, SaveLastNEpochs = 2, NetworkTrainUnetOnly = true };
        var result = new DreamBoothLoraTrainer(config).Train();
        var files = Directory.GetFiles(config.Output!, "*.safetensors").Select(Path.GetFileName).Order().ToList();
        Assert.Equal(["sks-000003.safetensors", "sks-000004.safetensors", "sks.safetensors"], files);
        Assert.Equal(files.Select(f => Path.Combine(result.OutputDir, f!)).Order(), result.SavedLoras.Order());
    }

    [Fact]
    public void Sample_images_record_the_lora_in_their_parameters()
    {
        using var dir = Fixtures.TempDir();
        var prompts = dir.File("prompts.txt");
        File.WriteAllText(prompts, "a photo of sks dog --s 2 --d 5\n");
        var config = TinyRun(dir, 1, 2) with { SamplePrompts = prompts, SampleEveryNEpochs = 1, SaveEveryNEpochs = 1, NetworkTrainUnetOnly = true };
        var result = new DreamBoothLoraTrainer(config).Train();

        var epochSample = PngFile.ReadText(result.Samples.Single(s => s.Contains("_e000001_")))["parameters"];
        var epochLora = Path.Combine(result.OutputDir, "sks-000001.safetensors");
        Assert.StartsWith("a photo of sks dog <lora:sks-000001:1>\n", epochSample);
        Assert.Contains($"Lora hashes: \"sks-000001: {LoraSet.A1111ShortHash(epochLora)}\"", epochSample);

        var finalSample = GenerationParameters.Parse(PngFile.ReadText(result.Samples.Single(s => s.Contains("_final_")))["parameters"]);
        Assert.Equal("a photo of sks dog <lora:sks:1>", finalSample.Prompt);
        Assert.Equal([new KeyValuePair<string, string>("sks", LoraSet.A1111ShortHash(result.LoraPath!))], finalSample.LoraHashes);
        Assert.Equal(5, finalSample.Seed);
    }

    [Fact]
    public void Lora_dropout_masks_come_from_the_given_generator()
    {
        using var layer = new AdaptableLinear(6, 5);
        using var lora = new LoraLinear("l", LoraPart.Unet, layer, 3, 3) { Dropout = 0.5 };
        using (torch.no_grad()) lora.UpWeight.fill_(0.1);
        lora.Attach();
        lora.train();
        using var g = new Generator(77, CPU);
        lora.DropoutGenerator = g;
        var x = torch.ones(4, 6);
        using var y = layer.forward(x);

        // The same mask, drawn from an identically seeded generator: kept inputs scaled by 1 / (1 - p).
        using var expectedGenerator = new Generator(77, CPU);
        var keep = torch.rand([4, 6], ScalarType.Float32, CPU, generator: expectedGenerator).ge(0.5).to(ScalarType.Float32);
        layer.RemoveAdapter(lora);
        using var baseOut = layer.forward(x);
        using var expected = baseOut + lora.UpWeight.detach().matmul(lora.DownWeight.detach().matmul((x * keep / 0.5).t())).t();
        Fixtures.AssertClose(expected, y, 1e-6, "dropout output");
        Assert.True(keep.sum().item<float>() < keep.numel(), "the mask drops something");
    }
}
