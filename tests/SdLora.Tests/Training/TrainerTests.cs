using SdLora.Imaging;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Sampling;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

public class TrainerTests
{
    /// <summary>A 64 px run of the tiny model on <paramref name="images"/> bundled dog photos (1 repeat each).</summary>
    internal static TrainingConfig TinyRun(TempDir dir, int images, int steps, string output = "out") 
    {
        var data = dir.File("data");
        if (!Directory.Exists(data)) TrainingTestData.CopyPhotos("dog", data, images);
        return new TrainingConfig
        {
            Model = Fixtures.CopiedSet("tiny-sd15"), Data = data, Output = dir.File(output), OutputName = "sks",
            InstancePrompt = "a photo of sks dog", NumRepeats = 1, Resolution = Resolution.Square(64),
            MinBucketReso = 64, MaxBucketReso = 128, BucketResoSteps = 64, MaxTrainSteps = steps,
            NetworkDim = 4, NetworkAlpha = 4, LearningRate = 1e-3, TextEncoderLr = 1e-4, SavePrecision = "fp32", Seed = 7,
            Dtype = "fp32", // exact numbers on every CPU (auto would pick bf16 where it is faster)
            ClassImageCache = dir.File("class-image-cache"), // the test's own: the user's cache may hold the tiny model's class images
        };
    }

    private static Dictionary<string, Tensor> LoadAll(string path)
    {
        using var f = SafetensorsFile.Open(path);
        return f.LoadAll();
    }

    [Fact]
    public void Resumed_run_equals_uninterrupted_run_and_cancel_saves_lora_and_state()
    {
        using var dir = Fixtures.TempDir();
        // 2 images = 2 steps per epoch; 4 steps cross epoch boundaries; the text encoder is trained too.
        var straight = TinyRun(dir, 2, 4, "straight") with { SaveEveryNEpochs = 1 };
        var a = new DreamBoothLoraTrainer(straight).Train();
        Assert.False(a.Cancelled);
        Assert.Equal(4, a.Steps);
        Assert.True(File.Exists(Path.Combine(a.OutputDir, "sks-000001.safetensors")));
        Assert.True(File.Exists(Path.Combine(a.OutputDir, "sks.safetensors")));
        Assert.True(File.Exists(Path.Combine(a.OutputDir, "loss.png")));
        Assert.Equal(4, LossLog.Read(a.LossCsv).Count);

        var interrupted = straight with { Output = dir.File("interrupted") };
        using var cts = new CancellationTokenSource();
        var progress = new SyncProgress<TrainingProgress>(p => { if (p.Phase == TrainingPhase.Training && p.Done == 1) cts.Cancel(); });
        var b = new DreamBoothLoraTrainer(interrupted).Train(progress, cts.Token);
        Assert.True(b.Cancelled);
        Assert.Equal(1, b.Steps);
        var cancelledLora = Path.Combine(b.OutputDir, "sks.safetensors");
        using (var f = SafetensorsFile.Open(cancelledLora)) Assert.Equal("1", f.Metadata["ss_steps"]);
        Assert.True(File.Exists(Path.Combine(b.OutputDir, "state", "state.json")));
        Assert.True(File.Exists(Path.Combine(b.OutputDir, "state", "optimizer.safetensors")));

        var c = new DreamBoothLoraTrainer(interrupted with { Resume = true }).Train();
        Assert.False(c.Cancelled);
        Assert.Equal(4, c.Steps);
        Assert.Equal(4, LossLog.Read(c.LossCsv).Count);

        var expected = LoadAll(Path.Combine(a.OutputDir, "state", "lora.safetensors"));
        var actual = LoadAll(Path.Combine(c.OutputDir, "state", "lora.safetensors"));
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        Assert.Contains(expected.Keys, k => k.StartsWith("lora_te_"));
        foreach (var (k, e) in expected)
        {
            double err = (actual[k] - e).abs().max().item<float>();
            Assert.True(err <= 1e-6, $"{k}: resumed differs by {err}");
        }
        // The losses of the resumed half equal the uninterrupted run's.
        var la = LossLog.Read(a.LossCsv); var lc = LossLog.Read(c.LossCsv);
        for (int i = 0; i < 4; i++) Assert.Equal(la[i].Loss, lc[i].Loss, 6);
        using var final = SafetensorsFile.Open(c.LoraPath!);
        var md = final.Metadata;
        Assert.Equal("4", md["ss_steps"]);
        Assert.Equal("2", md["ss_epoch"]);
        Assert.Contains("sks", md["ss_tag_frequency"]);
        Assert.Equal("4", md["ss_network_dim"]);
    }

    [Fact]
    public void Output_folder_holding_a_run_is_refused_and_resume_with_other_settings_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var cfg = TinyRun(dir, 1, 1) with { NetworkTrainUnetOnly = true };
        new DreamBoothLoraTrainer(cfg).Train();
        var e = Assert.Throws<SdLoraException>(() => new DreamBoothLoraTrainer(cfg).Train());
        Assert.Contains("already holds a training run", e.Message);
        Assert.Contains("set resume to continue it", e.Message);
        var r = Assert.Throws<SdLoraException>(() => new DreamBoothLoraTrainer(cfg with { Resume = true, NetworkDim = 8 }).Train());
        Assert.Contains("settings differ", r.Message);
        Assert.Contains("network-dim", r.Message);
    }

    [Fact]
    public void Diverging_loss_stops_with_a_message_and_keeps_the_last_finite_lora()
    {
        using var dir = Fixtures.TempDir();
        // Lion moves every weight by +-lr: 1e30 makes step 1's weights huge (still finite, saved after epoch 1) and
        // step 2's forward overflow, so the loss of step 2 is not finite.
        var cfg = TinyRun(dir, 1, 4) with { Optimizer = "Lion", LearningRate = 1e30, TextEncoderLr = 1e30, SaveEveryNEpochs = 1, MaxGradNorm = 0 };
        var e = Assert.Throws<SdLoraException>(() => new DreamBoothLoraTrainer(cfg).Train());
        Assert.Contains("the loss became", e.Message);
        Assert.Contains("at step 2", e.Message);
        var kept = Path.Combine(cfg.Output!, "sks-000001.safetensors");
        Assert.Contains(kept, e.Message);
        foreach (var (k, t) in LoadAll(kept)) Assert.True(t.isfinite().all().item<bool>(), k);
        Assert.False(File.Exists(Path.Combine(cfg.Output!, "sks-000002.safetensors")));
        Assert.False(File.Exists(Path.Combine(cfg.Output!, "sks.safetensors")));
    }

    /// <summary>The LoRA moves the model toward the training image (see <see cref="ConceptProbe"/>).</summary>
    [Fact]
    [Trait("Category", "Slow")]
    public void Training_lowers_the_loss_and_moves_generated_images_toward_the_training_image()
    {
        using var dir = Fixtures.TempDir();
        var cfg = TinyRun(dir, 1, 60) with { NetworkTrainUnetOnly = true, LearningRate = 3e-3, NetworkDim = 8, NetworkAlpha = 8 };
        var result = new DreamBoothLoraTrainer(cfg).Train();

        using var model = StableDiffusionModel.Load(cfg.Model!);
        using var probe = new ConceptProbe(model, Directory.GetFiles(cfg.Data!).Single());
        using var context = ConceptProbe.Context(model, cfg.InstancePrompt!);
        (double Loss, double Mse) Measure() => probe.Measure(model, context);
        var before = Measure();
        using var network = LoraNetwork.FromFile(result.LoraPath!, model.UNet, model.TextEncoder);
        network.Attach();
        var after = Measure();
        Assert.True(after.Loss < 0.8 * before.Loss, $"eval loss {before.Loss:F4} -> {after.Loss:F4}");
        Assert.True(after.Mse < 0.8 * before.Mse, $"generated latent MSE to the training image {before.Mse:F4} -> {after.Mse:F4}");
    }

    [Fact]
    public void Class_images_come_from_the_cache_in_a_later_run_and_every_phase_is_estimated_and_timed()
    {
        using var dir = Fixtures.TempDir();
        var cfg = TinyRun(dir, 1, 1, "first") with
        {
            NetworkTrainUnetOnly = true, ClassPrompt = "a photo of a dog", NumClassImages = 2, ClassImageSteps = 2,
            ClassImageCache = dir.File("cache"),
        };
        var messages = new List<string>();
        var classProgress = new List<TrainingProgress>();
        var progress = new SyncProgress<TrainingProgress>(p =>
        {
            if (p.Phase == TrainingPhase.Info) messages.Add(p.Message);
            if (p.Phase == TrainingPhase.ClassImages) classProgress.Add(p);
        });
        var first = new DreamBoothLoraTrainer(cfg).Train(progress);
        Assert.Equal(2, first.ClassImagesGenerated);
        Assert.Contains(messages, m => m.StartsWith("estimate from one measured step at 64x64"));
        Assert.Contains(messages, m => m.TrimStart().StartsWith("class images") && m.Contains("2 x (2 steps"));
        Assert.Contains(messages, m => m.Contains("DPM++ 2M Karras, 2 steps"));
        // Progress after every sampling step, with an ETA once a step is done.
        Assert.Contains(classProgress, p => p.Message == "image 2/2 step 1/2" && p.Eta > TimeSpan.Zero);
        var phases = first.Phases!.Select(p => p.Phase).ToList();
        Assert.Equal(["model load", "class images", "estimate", "latent caching", "training", "saving"], phases);
        Assert.Equal(1, first.Phases!.Single(p => p.Phase == "training").Count);
        Assert.All(first.Phases!, p => Assert.True(p.Seconds >= 0));

        messages.Clear();
        var second = new DreamBoothLoraTrainer(cfg with { Output = dir.File("second") }).Train(progress);
        Assert.Equal(0, second.ClassImagesGenerated);
        Assert.Contains(messages, m => m.StartsWith("class images: 2 reused from the cache"));
        Assert.DoesNotContain(messages, m => m.StartsWith("estimate"));
        Assert.Equal(2, ClassImageFolder.CountExisting(Path.Combine(dir.File("second"), "class_images")));
    }
}
