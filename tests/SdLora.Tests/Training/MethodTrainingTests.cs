using SdLora.IO;
using SdLora.Models;
using SdLora.Pipelines;
using SdLora.Text;
using SdLora.Training;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

/// <summary>Full DreamBooth fine-tuning and textual inversion on the bundled tiny model, end to end.</summary>
public class MethodTrainingTests(ITestOutputHelper output)
{
    internal static TrainingConfig DreamBooth(TempDir dir, int images, int steps, string outputName = "out") =>
        TrainerTests.TinyRun(dir, images, steps, outputName).WithMethod(TrainingConfig.MethodDreamBooth) with { OutputName = "sks", LearningRate = 1e-4 };

    internal static TrainingConfig Inversion(TempDir dir, int images, int steps, string outputName = "out") =>
        TrainerTests.TinyRun(dir, images, steps, outputName).WithMethod(TrainingConfig.MethodTextualInversion) with
        {
            OutputName = null, TokenString = "sks", InitWord = "dog", NumVectorsPerToken = 2, LearningRate = 1e-2,
        };

    /// <summary>A LoRA run that also trains a new word (pivotal tuning), as a "method" of the tests below.</summary>
    internal const string PivotalLora = "lora+token-string";

    internal static TrainingConfig ForMethod(string method, TempDir dir, int images, int steps, string outputName) => method switch
    {
        TrainingConfig.MethodDreamBooth => DreamBooth(dir, images, steps, outputName),
        TrainingConfig.MethodTextualInversion => Inversion(dir, images, steps, outputName),
        PivotalLora => PivotalTuningTests.Pivotal(dir, images, steps, outputName),
        _ => TrainerTests.TinyRun(dir, images, steps, outputName),
    };

    private static Dictionary<string, Tensor> StateWeights(string runDir)
    {
        var file = Directory.GetFiles(Path.Combine(runDir, "state"), "*.safetensors").Single(f => !f.EndsWith("optimizer.safetensors"));
        using var f = SafetensorsFile.Open(file);
        return f.LoadAll();
    }

    private static void CopyFolder(string from, string to)
    {
        foreach (var d in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to));
    }

    /// <summary>
    /// Three runs of 4 steps (2 images: 2 steps per epoch, state saved every epoch): straight through; stopped with the
    /// cancel token after step 1 and resumed; and "killed" after step 3 — the folder is copied as it stood then (state
    /// saved at step 2, loss.csv already holding step 3, like a process killed with -9) and the copy resumed. Both
    /// resumed runs end with the straight run's weights and losses.
    /// </summary>
    /// <summary>This machine's bf16 speed, measured once per test process.</summary>
    private static readonly Lazy<CpuKernelProbeResult> MachineProbe = new(() => CpuKernelProbe.Measure());

    [Theory]
    [InlineData(TrainingConfig.MethodLora, "no")]
    [InlineData(TrainingConfig.MethodDreamBooth, "no")]
    [InlineData(TrainingConfig.MethodDreamBooth, "bf16")] // bf16 weights trained through fp32 masters, which resume too
    [InlineData(TrainingConfig.MethodTextualInversion, "no")]
    [InlineData(PivotalLora, "no")]
    public void Resumes_exactly_after_cancel_and_after_a_kill(string method, string mixedPrecision)
    {
        using var dir = Fixtures.TempDir();
        var straight = ForMethod(method, dir, 2, 4, "straight") with { SaveEveryNEpochs = 1, MixedPrecision = mixedPrecision };
        if (method == TrainingConfig.MethodDreamBooth) straight = straight with { TrainTextEncoder = true, StopTextEncoderTraining = 3, TextEncoderLr = 1e-4 };
        if (mixedPrecision == "bf16") straight = straight with { Optimizer = "Adafactor" };
        var killedAt = dir.File("killed");
        // One probe for every session of the test: bf16's kernels (native or upcast) must be the same in all four runs.
        var probe = MachineProbe.Value;
        var a = TrainingSession.Create(straight, cpuProbe: () => probe).Run(new SyncProgress<TrainingProgress>(p =>
        {
            if (p.Phase == TrainingPhase.Training && p.Done == 3) CopyFolder(straight.Output!, killedAt);
        }));
        Assert.Equal(4, a.Steps);
        Assert.Equal(straight.Method, a.Method);

        var interrupted = straight with { Output = dir.File("interrupted") };
        using var cts = new CancellationTokenSource();
        var b = TrainingSession.Create(interrupted, cpuProbe: () => probe).Run(new SyncProgress<TrainingProgress>(p =>
        {
            if (p.Phase == TrainingPhase.Training && p.Done == 1) cts.Cancel();
        }), cts.Token);
        Assert.True(b.Cancelled);
        Assert.Equal(1, b.Steps);
        Assert.True(File.Exists(b.OutputFile) || Directory.Exists(b.OutputFile), "the cancelled run saved its result");
        var c = TrainingSession.Create(interrupted with { Resume = true }, cpuProbe: () => probe).Run();

        var d = TrainingSession.Create(straight with { Output = killedAt, Resume = true }, cpuProbe: () => probe).Run();
        Assert.Equal(4, d.Steps);

        var expected = StateWeights(a.OutputDir);
        if (mixedPrecision == "bf16")
        {
            Assert.All(expected.Values, t => Assert.Equal(ScalarType.BFloat16, t.dtype));
            using var optimizerState = SafetensorsFile.Open(Path.Combine(a.OutputDir, "state", "optimizer.safetensors"));
            Assert.Contains(optimizerState.Keys, k => k.EndsWith(".master"));
        }
        foreach (var resumed in new[] { c, d })
        {
            Assert.Equal(4, resumed.Steps);
            var actual = StateWeights(resumed.OutputDir);
            Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
            foreach (var (k, e) in expected)
            {
                double err = (actual[k].to(ScalarType.Float64) - e.to(ScalarType.Float64)).abs().max().item<double>();
                Assert.True(err <= 1e-6, $"{method} {k}: resumed run ({resumed.OutputDir}) differs by {err}");
            }
            var la = LossLog.Read(a.LossCsv);
            var lr = LossLog.Read(resumed.LossCsv);
            Assert.Equal(4, lr.Count);
            for (int i = 0; i < 4; i++) Assert.Equal(la[i].Loss, lr[i].Loss, 6);
        }
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Dreambooth_lowers_the_loss_and_moves_generations_toward_the_instance_image()
    {
        using var dir = Fixtures.TempDir();
        var config = DreamBooth(dir, 1, 16) with { LearningRate = 2e-3 };
        var result = new DreamBoothTrainingSession(config).Run();

        using var baseModel = StableDiffusionModel.Load(config.Model!);
        using var tuned = StableDiffusionModel.Load(result.OutputFile!);
        using var probe = new ConceptProbe(baseModel, Directory.GetFiles(config.Data!).Single());
        using var context = ConceptProbe.Context(baseModel, config.InstancePrompt!);
        var before = probe.Measure(baseModel, context);
        var after = probe.Measure(tuned, context);
        output.WriteLine($"loss {before.Loss:F4} -> {after.Loss:F4}, generated latent MSE {before.Mse:F4} -> {after.Mse:F4}");
        Assert.True(after.Loss < 0.8 * before.Loss, $"eval loss {before.Loss:F4} -> {after.Loss:F4}");
        Assert.True(after.Mse < 0.8 * before.Mse, $"generated latent MSE to the training image {before.Mse:F4} -> {after.Mse:F4}");
    }

    /// <summary>
    /// The same fine-tune with and without prior preservation (a class image of "a photo of dog" generated by the base
    /// model). Prior preservation keeps the class prompt fitting the base model's own class image: the fine-tune's loss
    /// there (class prompt, fixed noise and timesteps) is lower with it than without it. (The tiny random model barely
    /// reads its text conditioning, so instance and class prompts cannot be told apart in what it generates; this is the
    /// objective prior preservation adds, measured directly.)
    /// </summary>
    [Fact]
    [Trait("Category", "Slow")]
    public void Dreambooth_with_prior_preservation_keeps_the_class_prompt_closer_to_the_base_model()
    {
        using var dir = Fixtures.TempDir();
        const string classPrompt = "a photo of dog";
        // Batches of two, as diffusers' DreamBooth: with prior preservation every step sees the instance and a class image.
        var plain = DreamBooth(dir, 1, 10, "plain") with { LearningRate = 1e-3, TrainBatchSize = 2 };
        var prior = plain with { Output = dir.File("prior"), ClassPrompt = classPrompt, NumClassImages = 1, PriorLossWeight = 1.0 };
        var withoutPrior = new DreamBoothTrainingSession(plain).Run();
        var withPrior = new DreamBoothTrainingSession(prior).Run();
        Assert.Equal(1, withPrior.ClassImagesGenerated);

        using var baseModel = StableDiffusionModel.Load(plain.Model!);
        using var classProbe = new ConceptProbe(baseModel, Directory.GetFiles(Path.Combine(prior.Output!, "class_images"), "*.png").Single());
        using var context = ConceptProbe.Context(baseModel, classPrompt);
        (double Loss, double Mse) Measure(string checkpoint)
        {
            using var model = StableDiffusionModel.Load(checkpoint);
            return classProbe.Measure(model, context);
        }
        var without = Measure(withoutPrior.OutputFile!);
        var with = Measure(withPrior.OutputFile!);
        output.WriteLine($"class prompt on the class image: loss {without.Loss:F4} without prior preservation, {with.Loss:F4} with it");
        Assert.True(with.Loss < without.Loss, $"loss on the class image {with.Loss:F4} with prior preservation vs {without.Loss:F4} without");
    }

    /// <summary>
    /// Textual inversion trains only the conditioning, and the bundled tiny model barely reads its conditioning (its
    /// random cross-attention: replacing the whole text conditioning by zeros changes the loss by ~0.3%), so what can
    /// be shown is the direction: one step lowers the loss of the draws it trained on (fixed noise and timesteps), with
    /// the saved file used the way generation uses it (by name, from an embeddings folder).
    /// </summary>
    [Fact]
    public void Textual_inversion_step_lowers_the_loss_on_the_noise_and_timesteps_it_trained_on()
    {
        using var dir = Fixtures.TempDir();
        var config = Inversion(dir, 1, 1) with { NumRepeats = 8, TrainBatchSize = 8, LearningRate = 1e-3, WeightDecay = 0 };
        var result = new TextualInversionTrainingSession(config).Run();
        var embeddingsDir = Path.Combine(dir.Path, "embeddings");
        Directory.CreateDirectory(embeddingsDir);
        File.Copy(result.OutputFile!, Path.Combine(embeddingsDir, "sks.safetensors"));

        using var model = StableDiffusionModel.Load(config.Model!);
        using var probe = new ConceptProbe(model, Directory.GetFiles(config.Data!).Single());
        var dogRow = model.TextEncoder.text_model.embeddings.token_embedding.weight![model.Tokenizer.Encode("dog")[0]];
        using var untrained = new TextualInversionEmbedding("sks", dogRow.unsqueeze(0).expand(2, -1));
        Tensor Context(EmbeddingLibrary library)
        {
            var encoder = new PromptEncoder(model.Tokenizer, model.TextEncoder)
            {
                Embeddings = new PromptEmbeddings(library, model.Tokenizer, model.TextEncoder.Config.VocabSize, model.TextEncoder.Config.HiddenSize),
            };
            using var encoding = encoder.Encode(config.InstancePrompt!);
            return encoding.Conditioning.clone();
        }
        using var before = new EmbeddingLibrary(null, [untrained]);
        using var after = new EmbeddingLibrary(embeddingsDir);
        using var contextBefore = Context(before);
        using var contextAfter = Context(after);
        Assert.False(torch.equal(contextBefore, contextAfter).all().item<bool>(), "the trained vectors change the conditioning");

        var (noise, timesteps) = TrainingSession.DrawNoise(config, 0, 0, [8, .. probe.Latents.shape[1..]], model.Schedule.NumTrainTimesteps);
        double Loss(Tensor context)
        {
            using var noGrad = torch.no_grad();
            using var r = DiffusionLoss.Compute(model.UNet, model.Schedule, probe.Latents.expand(8, -1, -1, -1), noise, timesteps, context.expand(8, -1, -1), null, new());
            return r.Loss.item<float>();
        }
        double lossBefore = Loss(contextBefore), lossAfter = Loss(contextAfter);
        output.WriteLine($"loss on the trained draws {lossBefore:F6} -> {lossAfter:F6}");
        Assert.True(lossAfter < lossBefore - 1e-6 * lossBefore, $"loss on the trained draws {lossBefore:F6} -> {lossAfter:F6}");
    }
}
