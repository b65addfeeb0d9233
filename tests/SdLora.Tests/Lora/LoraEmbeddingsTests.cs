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
    [Fact]
    public void Each_bundled_group_takes_string_to_param_then_emb_params_then_clip_l()
    {
        using var dir = Fixtures.TempDir();
        using var one = torch.full([1, 32], 1f);
        using var two = torch.full([1, 32], 2f);
        using var three = torch.full([1, 32], 3f);
        var path = LoraWith(dir,
            ("bundle_emb.all.clip_l", three), ("bundle_emb.all.emb_params", two), ("bundle_emb.all.string_to_param.*", one),
            ("bundle_emb.kohya.clip_g", three), ("bundle_emb.kohya.emb_params", two),
            ("bundle_emb.onetrainer.clip_g", one), ("bundle_emb.onetrainer.clip_l", three),
            ("bundle_emb.nodot", one)); // not a group: no part name after the word

        var words = LoraEmbeddings.ReadBundled(path);
        try
        {
            Assert.Equal(["all", "kohya", "onetrainer"], words.Select(w => w.Name).Order(StringComparer.Ordinal));
            Assert.Equal(1f, words.Single(w => w.Name == "all").Vectors[0, 0].item<float>());
            Assert.Equal(2f, words.Single(w => w.Name == "kohya").Vectors[0, 0].item<float>());
            Assert.Equal(3f, words.Single(w => w.Name == "onetrainer").Vectors[0, 0].item<float>());
        }
        finally
        {
            foreach (var w in words) w.Dispose();
        }
    }

    [Fact]
    public void A_bundled_embedding_that_is_not_a_matrix_is_refused_naming_its_key()
    {
        using var dir = Fixtures.TempDir();
        using var cube = torch.zeros(1, 2, 32);
        var path = LoraWith(dir, ("bundle_emb.ok.string_to_param.*", torch.zeros(1, 32)), ("bundle_emb.cube.string_to_param.*", cube));
        var e = Assert.Throws<SdLoraException>(() => LoraEmbeddings.Read(path));
        Assert.Equal($"{path}: its bundled embedding 'bundle_emb.cube.string_to_param.*' has shape [1,2,32], not [vectors, dim]", e.Message);
    }

    [Fact]
    public void Only_a_safetensors_LoRA_is_searched_for_bundled_words_and_names_clash_ignoring_case()
    {
        using var dir = Fixtures.TempDir();
        var path = LoraWith(dir, ("bundle_emb.Word.string_to_param.*", torch.zeros(1, 32)));
        var folder = LoraEmbeddings.FolderBeside(path);
        Directory.CreateDirectory(folder);
        TextualInversionEmbedding.Write(Path.Combine(folder, "word.safetensors"), torch.ones(3, 32), new Dictionary<string, string>());
        TextualInversionEmbedding.Write(Path.Combine(folder, "other.safetensors"), torch.ones(1, 32), new Dictionary<string, string>());

        var words = LoraEmbeddings.Read(path);
        try
        {
            Assert.Equal(["other", "word"], words.Select(w => w.Name).Order(StringComparer.Ordinal)); // "Word" bundled, replaced by the folder's "word"
            Assert.Equal(3, words.Single(w => w.Name == "word").VectorCount);
        }
        finally
        {
            foreach (var w in words) w.Dispose();
        }

        // The same file under another extension is not opened as safetensors; the folder beside it still counts.
        Directory.CreateDirectory(dir.File("bin"));
        var renamed = Path.Combine(dir.File("bin"), "bundled.bin");
        File.Copy(path, renamed);
        Assert.Empty(LoraEmbeddings.Read(renamed));
        Directory.CreateDirectory(LoraEmbeddings.FolderBeside(renamed));
        TextualInversionEmbedding.Write(Path.Combine(LoraEmbeddings.FolderBeside(renamed), "beside.safetensors"), torch.ones(1, 32), new Dictionary<string, string>());
        var beside = LoraEmbeddings.Read(renamed);
        Assert.Equal("beside", Assert.Single(beside).Name);
        beside[0].Dispose();
    }

    [Fact]
    public void Deleting_a_LoRA_deletes_the_words_trained_with_it_and_missing_parts_are_fine()
    {
        using var dir = Fixtures.TempDir();
        var path = LoraWith(dir);
        var word = LoraEmbeddings.FileBeside(path, "sks");
        Assert.Equal(Path.Combine(dir.File("bundled.embeddings"), "sks.safetensors"), word);
        Directory.CreateDirectory(Path.GetDirectoryName(word)!);
        TextualInversionEmbedding.Write(word, torch.ones(1, 32), new Dictionary<string, string>());
        var neighbour = dir.File("bundled-2.safetensors");
        File.Copy(path, neighbour);

        LoraEmbeddings.DeleteWithWords(path);

        Assert.False(File.Exists(path));
        Assert.False(Directory.Exists(LoraEmbeddings.FolderBeside(path)));
        Assert.True(File.Exists(neighbour));
        LoraEmbeddings.DeleteWithWords(path); // again: nothing left, no error
        LoraEmbeddings.DeleteWithWords(neighbour); // a LoRA without words
        Assert.False(File.Exists(neighbour));
    }
}
