using SdLora.Imaging;
using SdLora.IO;
using SdLora.Tests.Cli;
using Xunit;

namespace SdLora.Tests.Training;

public class MethodCommandTests
{
    /// <summary>A kohya textual-inversion command trains an embedding, and `generate` uses it by name from --embeddings-dir.</summary>
    [Fact]
    public void Kohya_textual_inversion_command_trains_an_embedding_that_generate_uses_by_name()
    {
        using var tmp = Fixtures.TempDir();
        TrainingTestData.CopyPhotos("dog", tmp.File("data"), 1);
        var train = CliRunner.Run("train", "--method", "textual-inversion", "--pretrained_model_name_or_path", Fixtures.CopiedSet("tiny-sd15"),
            "--train_data_dir", tmp.File("data"), "--output_dir", tmp.File("out"), "--token_string", "sks", "--init_word", "dog",
            "--num_vectors_per_token", "2", "--use_object_template", "--resolution", "64", "--max_train_steps", "2", "--num_repeats", "1");
        Assert.True(train.ExitCode == 0, train.ToString());
        Assert.Contains("embedding: ", train.Out);
        var embedding = tmp.File("out/sks.safetensors");
        using (var f = SafetensorsFile.Open(embedding)) Assert.Equal([2L, 32], f["emb_params"].Shape);

        var generate = CliRunner.Run("generate", "--model", Fixtures.CopiedSet("tiny-sd15"), "-p", "a photo of sks on a beach", "-W", "64", "-H", "64",
            "--steps", "2", "--seed", "1", "--embeddings-dir", tmp.File("out"), "--out", tmp.File("images"));
        Assert.True(generate.ExitCode == 0, generate.ToString());
        var png = Directory.GetFiles(tmp.File("images"), "*.png").Single();
        Assert.Contains($"TI hashes: \"sks: {SdLora.Text.TextualInversionEmbedding.FileShortHash(embedding)}\"", PngFile.ReadText(png)["parameters"]);

        var tokenize = CliRunner.Run("tokenize", "a photo of sks on a beach", "--embeddings-dir", tmp.File("out"));
        Assert.Contains("embedding: sks (2 vectors)", tokenize.Out);
        Assert.Contains("tokens: 8/75", tokenize.Out); // a photo of sks[0] sks[1] on a beach
    }
}
