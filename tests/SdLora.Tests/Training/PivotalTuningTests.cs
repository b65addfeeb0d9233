using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Text;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

/// <summary>A LoRA run with a token string: the new word's vectors train beside the LoRA and travel with it.</summary>
public class PivotalTuningTests
{
    internal static TrainingConfig Pivotal(TempDir dir, int images, int steps, string output = "out") =>
        TrainerTests.TinyRun(dir, images, steps, output) with { TokenString = "sks", InitWord = "dog", NumVectorsPerToken = 2, EmbeddingLr = 1e-2 };

    private static Tensor Row(StableDiffusionModel model, string word) =>
        model.TextEncoder.text_model.embeddings.token_embedding.weight![model.Tokenizer.Encode(word)[0]].to(ScalarType.Float32);

    [Fact]
    public void The_word_trains_beside_the_lora_and_is_written_next_to_it_as_a_kohya_embedding()
    {
        using var dir = Fixtures.TempDir();
        var config = Pivotal(dir, 2, 3);
        using var model = StableDiffusionModel.Load(config.Model!);
        using var tableBefore = model.TextEncoder.text_model.embeddings.token_embedding.weight!.clone();
        var result = new LoraTrainingSession(config, model).Run();

        // The LoRA stays a plain kohya file: every key is a LoRA factor or alpha (diffusers refuses anything else).
        using (var lora = LoraFile.Read(result.OutputFile!))
        {
            Assert.Empty(lora.UnknownKeys);
            Assert.Equal("sks.embeddings/sks.safetensors", lora.Metadata["sdlora_embeddings"]);
        }
        using (var f = SafetensorsFile.Open(result.OutputFile!))
            Assert.All(f.Keys, k => Assert.StartsWith("lora_", k));

        var inspection = LoraInspector.Inspect(result.OutputFile!);
        Assert.Equal([new LoraWordInfo("sks", 2, Path.Combine("sks.embeddings", "sks.safetensors"))], inspection.Words);
        var shown = Cli.CliRunner.Run("lora", "inspect", result.OutputFile!);
        Assert.Contains("word: sks (2 vector(s), sks.embeddings/sks.safetensors): used in prompts while this LoRA is in use", shown.Out);

        var embeddingFile = Path.Combine(result.OutputDir, "sks.embeddings", "sks.safetensors");
        using var embedding = TextualInversionEmbedding.Read(embeddingFile);
        Assert.Equal("sks", embedding.Name);
        Assert.Equal(2, embedding.VectorCount);
        using var dog = Row(model, "dog");
        double moved = (embedding.Vectors - dog.unsqueeze(0)).abs().max().item<float>();
        Assert.True(moved > 1e-4, $"the vectors left 'dog' (moved {moved})");

        // The lent model is as it was: no added rows, its table untouched.
        Assert.Null(model.TextEncoder.text_model.embeddings.AddedTokens);
        var tableAfter = model.TextEncoder.text_model.embeddings.token_embedding.weight!;
        Assert.Equal(0.0, (tableAfter.to(ScalarType.Float64) - tableBefore.to(ScalarType.Float64)).abs().max().item<double>());
    }

    [Fact]
    public void Generation_with_the_lora_uses_its_word_and_names_it_in_the_parameters()
    {
        using var dir = Fixtures.TempDir();
        var config = Pivotal(dir, 1, 2) with { EmbeddingLr = 0.5 }; // a big step: the word must visibly change the image
        using var model = StableDiffusionModel.Load(config.Model!);
        var result = new LoraTrainingSession(config, model).Run();
        var pipeline = new Txt2ImgPipeline(model);
        GeneratedImage Generate() => pipeline.Generate(new Txt2ImgOptions
        {
            Prompt = "a photo of sks dog", Width = 64, Height = 64, Steps = 2, Seed = 3, Loras = [new LoraUse(result.OutputFile!)],
            EmbeddingsDir = null, OutputDir = null,
        }).Images.Single();

        var withWord = Generate();
        var hash = TextualInversionEmbedding.FileShortHash(Path.Combine(result.OutputDir, "sks.embeddings", "sks.safetensors"));
        Assert.Contains(new KeyValuePair<string, string>("sks", hash), withWord.Parameters.TextualInversionHashes);

        Directory.Delete(Path.Combine(result.OutputDir, "sks.embeddings"), true);
        var withoutWord = Generate();
        Assert.Empty(withoutWord.Parameters.TextualInversionHashes);
        Assert.NotEqual(withWord.Image.Pixels, withoutWord.Image.Pixels);
    }

    [Fact]
    public void Old_epoch_files_go_with_their_word_folders()
    {
        using var dir = Fixtures.TempDir();
        var config = Pivotal(dir, 1, 4) with { SaveEveryNEpochs = 1, SaveLastNEpochs = 1, NumVectorsPerToken = 1 };
        var result = new LoraTrainingSession(config).Run();
        var entries = Directory.EnumerateFileSystemEntries(result.OutputDir).Select(Path.GetFileName)
            .Where(n => n!.StartsWith("sks", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(["sks-000003.embeddings", "sks-000003.safetensors", "sks.embeddings", "sks.safetensors"], entries);
    }

    [Fact]
    public void Overwriting_a_pivotal_run_with_a_plain_lora_run_takes_the_old_words_away()
    {
        using var dir = Fixtures.TempDir();
        var config = Pivotal(dir, 1, 1);
        new LoraTrainingSession(config).Run();
        Assert.True(Directory.Exists(Path.Combine(config.Output!, "sks.embeddings")));
        new LoraTrainingSession(config with { TokenString = null, InitWord = null, EmbeddingLr = null, NumVectorsPerToken = 1, Overwrite = true }).Run();
        Assert.True(File.Exists(Path.Combine(config.Output!, "sks.safetensors")));
        Assert.False(Directory.Exists(Path.Combine(config.Output!, "sks.embeddings")), "the new LoRA would bring the old run's word");
    }

    [Fact]
    public void A_run_whose_captions_lack_the_word_is_refused_before_training()
    {
        using var dir = Fixtures.TempDir();
        var config = Pivotal(dir, 1, 2) with { InstancePrompt = "a photo of a dog" };
        var e = Assert.Throws<SdLoraException>(() => new LoraTrainingSession(config).Run());
        Assert.Equal("no caption contains the token string 'sks': write it into the captions or instance-prompt (\"a photo of sks\"), " +
            "or leave token-string unset to train the LoRA alone", e.Message);
        Assert.Equal("token-string", e.Setting);
    }

    [Theory]
    [InlineData("dreambooth", "sks", null, "captions", "token-string", "token-string is for textual-inversion and for a LoRA's pivotal tuning")]
    [InlineData("lora", null, 1e-3, "captions", "embedding-lr", "embedding-lr and init-word are for a new word's vectors: set token-string too")]
    [InlineData("lora", "sks", -1.0, "captions", "embedding-lr", "embedding-lr must be > 0 (got -1)")]
    [InlineData("lora", "sks", null, "object", "template", "template object is for textual-inversion")]
    [InlineData("lora", " ", null, "captions", "token-string", "token-string is empty")]
    [InlineData("textual-inversion", "sks", 1e-3, "captions", "embedding-lr", "embedding-lr is for a LoRA's pivotal tuning")]
    public void Settings_that_do_not_fit_the_method_are_refused(string method, string? token, double? embeddingLr, string template, string setting, string message)
    {
        var c = TrainingConfig.ForMethod(method) with { Model = "m", Data = "d", Output = "o", TokenString = token, EmbeddingLr = embeddingLr, Template = template };
        var e = Assert.Throws<SdLoraException>(() => c.Validate());
        Assert.Equal(setting, e.Setting);
        Assert.StartsWith(message, e.Message);
    }

    [Fact]
    public void A_lora_run_with_a_token_string_is_pivotal_tuning_and_uses_the_default_embedding_rate()
    {
        var c = new TrainingConfig { Model = "m", Data = "d", Output = "o", TokenString = "sks" }.Validate();
        Assert.True(c.PivotalTuning);
        Assert.Equal(5e-3, c.EffectiveEmbeddingLr);
        Assert.False((c with { Method = TrainingConfig.MethodTextualInversion }).PivotalTuning);
        Assert.False((c with { TokenString = null }).PivotalTuning);
    }
}
