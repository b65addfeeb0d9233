using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using SdLora.Imaging;
using SdLora.Toy;
using SdLora.Training;
using Xunit;
using Xunit.Abstractions;

namespace SdLora.Web.Tests;

/// <summary>
/// The web UI's whole loop on the bundled toy model, judged by what it draws: a dataset of the held-out teal heart is
/// uploaded, a training job runs the demo's recipe, and the A1111 endpoint's pictures of "a sks shape" with the new LoRA
/// look like the heart (scored by <see cref="ToyScorer"/>, no model involved) while the class prompt stays as it was.
/// </summary>
[Trait("Category", "Slow")]
public sealed class ToyTrainFlowTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string ToyModel = "toy-shapes";
    private WebHarness Web = null!;

    public async Task InitializeAsync() => Web = await WebHarness.Start(tweak: o => o with
    {
        ExtraCheckpoints = new Dictionary<string, string>(o.ExtraCheckpoints) { [ToyModel] = Path.Combine(WebHarness.RepoRoot, "assets", "toy-shapes") },
    });

    public async Task DisposeAsync() => await Web.DisposeAsync();

    /// <summary>The demo's training settings as the train form sends them (the server sets the paths).</summary>
    private static Dictionary<string, string?> DemoSettings(ToyDemo demo)
    {
        var c = demo.TrainingConfig("model", "data", "out", ToyDemo.DefaultSteps, overwrite: false);
        string F(object? v) => TrainingSetting.Format(v);
        return new()
        {
            ["instance-prompt"] = c.InstancePrompt, ["class-prompt"] = c.ClassPrompt, ["num-class-images"] = F(c.NumClassImages),
            ["class-image-cache"] = "none", ["prior-loss-weight"] = F(c.PriorLossWeight), ["num-repeats"] = F(c.NumRepeats),
            ["resolution"] = F(c.Resolution.Width), ["min-bucket-reso"] = F(c.MinBucketReso), ["max-bucket-reso"] = F(c.MaxBucketReso),
            ["bucket-reso-steps"] = F(c.BucketResoSteps), ["train-batch-size"] = F(c.TrainBatchSize), ["max-train-steps"] = F(c.MaxTrainSteps),
            ["network-dim"] = F(c.NetworkDim), ["network-alpha"] = F(c.NetworkAlpha), ["learning-rate"] = F(c.LearningRate),
            ["text-encoder-lr"] = F(c.TextEncoderLr), ["seed"] = F(c.Seed),
            ["token-string"] = c.TokenString, ["init-word"] = c.InitWord, ["embedding-lr"] = F(c.EmbeddingLr),
        };
    }

    /// <summary>The demo's seeds for <paramref name="prompt"/> through the A1111 endpoint, each scored against the taught concept.</summary>
    private async Task<List<double>> Scores(ToyDemo demo, string prompt, bool wordExpected = false)
    {
        var r = await Web.Post("/sdapi/v1/txt2img", new
        {
            prompt, seed = demo.Seeds[0], batch_size = demo.Seeds.Count, steps = ToyEvaluation.Steps, cfg_scale = ToyEvaluation.CfgScale,
            sampler_name = ToyEvaluation.Sampler, width = ToyWorld.ImageSize, height = ToyWorld.ImageSize,
            override_settings = new Dictionary<string, object> { ["sd_model_checkpoint"] = ToyModel },
        });
        var infotext = JsonDocument.Parse(r.GetProperty("info").GetString()!).RootElement.GetProperty("infotexts")[0].GetString()!;
        Assert.Equal(wordExpected, infotext.Contains($"TI hashes: \"{ToyDemo.Token}: "));
        var scores = new List<double>();
        foreach (var b64 in r.GetProperty("images").EnumerateArray())
        {
            var png = Path.Combine(Web.DataDir, $"score-{Guid.NewGuid():N}.png");
            File.WriteAllBytes(png, Convert.FromBase64String(b64.GetString()!));
            scores.Add(ToyScorer.Score(RgbImage.Load(png), demo.Target).Overall);
            File.Delete(png);
        }
        Assert.Equal(demo.Seeds.Count, scores.Count);
        return scores;
    }

    [Fact]
    public async Task Upload_train_and_generate_in_the_web_ui_teach_the_toy_model_the_held_out_concept()
    {
        var demo = new ToyDemo();
        var pictures = Path.Combine(Web.DataDir, "pictures");
        demo.WriteInstanceImages(pictures);
        await Web.Post("/api/datasets", new { name = "teal-heart", instance_prompt = demo.InstancePrompt, repeats = 1 }, 201);
        var form = new MultipartFormDataContent();
        foreach (var p in Directory.GetFiles(pictures, "*.png").Order(StringComparer.Ordinal))
        {
            var content = new ByteArrayContent(File.ReadAllBytes(p));
            content.Headers.ContentType = new MediaTypeHeaderValue("image/png");
            form.Add(content, "files", Path.GetFileName(p));
        }
        Assert.Equal(HttpStatusCode.OK, (await Web.Client.PostAsync("/api/datasets/teal-heart/images", form)).StatusCode);

        var conceptBefore = await Scores(demo, demo.ConceptPrompt);
        var classBefore = await Scores(demo, demo.ClassPrompt);

        var job = await Web.Post("/api/train", new { run = "heart", dataset = "teal-heart", model = ToyModel, settings = DemoSettings(demo) }, 202);
        // A safety net, not a speed target: alone the job takes about a minute, beside the library suite on 2 cores ten or more.
        var done = await Web.WaitJob(job.GetProperty("id").GetString()!, TimeSpan.FromMinutes(30));
        Assert.True(done.GetProperty("state").GetString() == "succeeded", done.ToString());
        var run = await Web.Get("/api/runs/heart");
        Assert.Contains("heart.safetensors", run.GetProperty("loras").EnumerateArray().Select(l => l.GetString()));
        Assert.True(File.Exists(Path.Combine(Web.DataDir, "runs", "heart", "heart.embeddings", "sks.safetensors")), "the word's vectors lie beside the LoRA");

        Assert.True(File.Exists(Path.Combine(Web.DataDir, "models", "lora", "heart.embeddings", "sks.safetensors")), "the library copy of the LoRA has its word");
        var conceptAfter = await Scores(demo, $"{demo.ConceptPrompt} <lora:heart:1>", wordExpected: true);
        var classAfter = await Scores(demo, $"{demo.ClassPrompt} <lora:heart:1>");
        output.WriteLine($"concept {conceptBefore.Average():F2} -> {conceptAfter.Average():F2}; class {classBefore.Average():F2} -> {classAfter.Average():F2}");
        // The same bounds as the library's test of this recipe (ToyLoraTests), which runs without the web UI.
        Assert.True(conceptAfter.Average() >= conceptBefore.Average() + 0.08, $"concept {conceptBefore.Average():F2} -> {conceptAfter.Average():F2}");
        Assert.True(classAfter.Average() <= classBefore.Average() + 0.15, $"class {classBefore.Average():F2} -> {classAfter.Average():F2}");
    }
}
