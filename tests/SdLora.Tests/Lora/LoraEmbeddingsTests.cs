using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Text;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>Word embeddings that come with a LoRA: bundled inside it (A1111, OneTrainer) or beside it (sdlora's pivotal tuning).</summary>
public class LoraEmbeddingsTests
{
    /// <summary>The bundled tiny kohya LoRA with <paramref name="extra"/> tensors added to its keys.</summary>
    private static string LoraWith(TempDir dir, params (string Key, Tensor Value)[] extra)
    {
        var path = dir.File("bundled.safetensors");
        using var source = SafetensorsFile.Open(Fixtures.CopiedSet("lora_kohya_tiny.safetensors"));
        var tensors = source.LoadAll();
        foreach (var (k, v) in extra) tensors[k] = v;
        Safetensors.Save(path, tensors, source.Metadata);
        return path;
    }

    [Fact]
    public void Bundled_embeddings_are_read_in_each_tools_layout_and_are_not_unknown_lora_keys()
    {
        using var dir = Fixtures.TempDir();
        using var a1111 = torch.arange(64, dtype: ScalarType.Float32).reshape(2, 32);       // A1111 / LyCORIS: string_to_param.*
        using var oneTrainer = torch.full([1, 32], 0.5f, ScalarType.Float16);                // OneTrainer: clip_l
        using var single = torch.full([32], -1f);                                            // one unnamed vector
        var path = LoraWith(dir, ("bundle_emb.sksdog.string_to_param.*", a1111), ("bundle_emb.otword.clip_l", oneTrainer), ("bundle_emb.solo.vec", single));

        using (var lora = LoraFile.Read(path)) Assert.Empty(lora.UnknownKeys);
        var words = LoraEmbeddings.ReadBundled(path);
        try
        {
            Assert.Equal(["otword", "sksdog", "solo"], words.Select(w => w.Name).Order(StringComparer.Ordinal));
            var sksdog = words.Single(w => w.Name == "sksdog");
            Assert.Equal(a1111.data<float>().ToArray(), sksdog.Vectors.data<float>().ToArray());
            Assert.Equal(TextualInversionEmbedding.FileShortHash(path), sksdog.ShortHash);
            Assert.Equal([1L, 32], words.Single(w => w.Name == "otword").Vectors.shape);
            Assert.Equal(0.5f, words.Single(w => w.Name == "otword").Vectors[0, 0].item<float>());
            Assert.Equal([1L, 32], words.Single(w => w.Name == "solo").Vectors.shape);
        }
        finally
        {
            foreach (var w in words) w.Dispose();
        }
    }

    [Fact]
    public void A_bundled_group_sdlora_cannot_read_is_refused_in_one_line_naming_the_file()
    {
        using var dir = Fixtures.TempDir();
        using var g = torch.zeros(1, 1280);
        using var l = torch.zeros(1, 768);
        var path = LoraWith(dir, ("bundle_emb.xlword.g_part", g), ("bundle_emb.xlword.other", l));
        var e = Assert.Throws<SdLoraException>(() => LoraEmbeddings.Read(path));
        Assert.Equal($"{path}: its bundled embedding 'xlword' has 2 tensors (g_part, other) and none sdlora reads (string_to_param.*, emb_params or clip_l); " +
                     "remove it from the file or export the embedding on its own", e.Message);
    }

    [Fact]
    public void The_folder_beside_the_lora_wins_over_a_bundled_word_of_the_same_name()
    {
        using var dir = Fixtures.TempDir();
        using var bundled = torch.zeros(1, 32);
        var path = LoraWith(dir, ("bundle_emb.sks.string_to_param.*", bundled));
        Assert.Equal(dir.File("bundled.embeddings"), LoraEmbeddings.FolderBeside(path));
        Directory.CreateDirectory(LoraEmbeddings.FolderBeside(path));
        using var own = torch.ones(2, 32);
        TextualInversionEmbedding.Write(Path.Combine(LoraEmbeddings.FolderBeside(path), "sks.safetensors"), own, new Dictionary<string, string>());
        File.WriteAllText(Path.Combine(LoraEmbeddings.FolderBeside(path), "notes.txt"), "not an embedding");

        using var words = LoraEmbeddings.ReadAll([path, dir.File("missing.safetensors")]);
        var sks = Assert.Single(words.Embeddings);
        Assert.Equal(2, sks.VectorCount);
        Assert.Equal(1f, sks.Vectors[0, 0].item<float>());
    }

    [Fact]
    public void Generating_with_a_lora_that_bundles_a_word_uses_the_word()
    {
        using var dir = Fixtures.TempDir();
        using var model = StableDiffusionModel.Load(Fixtures.CopiedSet("tiny-sd15"));
        int width = model.TextEncoder.Config.HiddenSize;
        using var g = new Generator(5, CPU);
        using var vector = torch.randn([1, width], generator: g) * 3;
        var bundled = LoraWith(dir, ("bundle_emb.zqword.string_to_param.*", vector));
        using var otherDir = Fixtures.TempDir();
        var plain = LoraWith(otherDir);
        var pipeline = new Txt2ImgPipeline(model);
        GeneratedImage Generate(string lora) => pipeline.Generate(new Txt2ImgOptions
        {
            Prompt = "a photo of zqword", Width = 64, Height = 64, Steps = 2, Seed = 1, Loras = [new LoraUse(lora)], EmbeddingsDir = null,
        }).Images.Single();

        var withWord = Generate(bundled);
        Assert.Equal([new KeyValuePair<string, string>("zqword", TextualInversionEmbedding.FileShortHash(bundled))], withWord.Parameters.TextualInversionHashes);
        Assert.Empty(Generate(plain).Parameters.TextualInversionHashes);
        Assert.NotEqual(Generate(plain).Image.Pixels, withWord.Image.Pixels);
    }
}
