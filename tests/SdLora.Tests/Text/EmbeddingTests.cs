using SdLora.Cli.Commands;
using SdLora.Imaging;
using SdLora.IO;
using SdLora.Pipelines;
using SdLora.Tests.Checkpoints;
using SdLora.Text;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Text;

/// <summary>Textual-inversion words in the tokenizer, embedding files in every format A1111 reads, and their use in prompts.</summary>
public class EmbeddingTests
{
    private static readonly ClipTokenizer Clip = ClipTokenizer.Default;

    // ---------------------------------------------------------------- tokenizer words

    [Fact]
    public void Added_words_get_new_ids_where_they_stand_alone_in_any_case()
    {
        var t = Clip.WithAddedTokens(["sks", "sks1"]);
        int sks = Clip.VocabSize, sks1 = Clip.VocabSize + 1;
        Assert.Equal([.. Clip.Encode("a photo of"), sks, sks1, .. Clip.Encode("dog,")], t.Encode("a photo of SKS sks1 dog,"));
        Assert.Equal([sks, .. Clip.Encode(", blue")], t.Encode("sks, blue"));
        // Inside a longer word or next to a digit it is ordinary text; the longest added word wins.
        foreach (var text in new[] { "he asks", "sksdog", "2sks", "sks12" })
            Assert.Equal(Clip.Encode(text), t.Encode(text));
        Assert.Equal("sks1", t.TokenOf(sks1));
        Assert.Equal(Clip.VocabSize + 2, t.VocabSize);
        // The tokenizer it came from is unchanged.
        Assert.Empty(Clip.AddedTokens);
        Assert.Equal(49408, Clip.VocabSize);
        Assert.Throws<SdLoraException>(() => t.WithAddedTokens(["SKS"]));
    }

    [Fact]
    public void Tokenizer_written_as_a_diffusers_folder_reads_back_the_same()
    {
        using var dir = Fixtures.TempDir();
        Clip.WriteDiffusersFolder(dir.Path);
        var back = ClipTokenizer.FromDiffusersFolder(dir.Path);
        const string prompt = "a photo of sks dog on the beach, (masterpiece:1.2), 4k";
        Assert.Equal(Clip.Encode(prompt), back.Encode(prompt));
        Assert.Equal(Clip.VocabSize, back.VocabSize);
        Assert.Equal(File.ReadAllText(Fixtures.CopiedSet("tiny-sd15/tokenizer/merges.txt")).TrimEnd(), File.ReadAllText(dir.File("merges.txt")).TrimEnd());
    }

    // ---------------------------------------------------------------- files

    private static Tensor Vectors(int n, int dim, int seed = 1)
    {
        using var g = new Generator((ulong)seed, CPU);
        return torch.randn([n, dim], generator: g);
    }

    /// <summary>A1111's .pt: <c>{string_to_token: {'*': 265}, string_to_param: {'*': tensor}, name, step}</c>; optionally as a pickled ParameterDict.</summary>
    private static void WriteA1111Pt(string path, Tensor vectors, bool parameterDict)
    {
        var w = new PickleWriter();
        w.EmptyDict().Put().Mark();
        w.Str("string_to_token").EmptyDict().Put().Mark().Str("*").Int(265).SetItems();
        w.Str("string_to_param");
        long[] shape = vectors.shape, stride = [shape[1], 1];
        if (parameterDict)
        {
            w.Global("torch.nn.modules.container", "ParameterDict").EmptyTuple().Op(0x81).Put(); // NEWOBJ
            w.EmptyDict().Put().Mark().Str("_parameters").Global("collections", "OrderedDict").EmptyTuple().Reduce().Put().Mark().Str("*");
            w.Global("torch._utils", "_rebuild_parameter").Mark().Tensor("FloatStorage", "0", vectors.numel(), 0, shape, stride).Op(0x88)
                .Global("collections", "OrderedDict").EmptyTuple().Reduce().Tuple().Reduce();
            w.SetItems().SetItems().Op((byte)'b'); // BUILD
        }
        else w.EmptyDict().Put().Mark().Str("*").Tensor("FloatStorage", "0", vectors.numel(), 0, shape, stride).SetItems();
        w.Str("name").Str("sks").Str("step").Int(500).SetItems();
        using var c = vectors.contiguous();
        TorchZipWriter.Write(path, w.Stop().ToArray(), new Dictionary<string, byte[]> { ["0"] = c.bytes.ToArray() });
    }

    [Theory]
    [InlineData("a1111.pt", false)]
    [InlineData("a1111-parameterdict.pt", true)]
    public void A1111_pt_embeddings_are_read_through_the_restricted_unpickler(string file, bool parameterDict)
    {
        using var dir = Fixtures.TempDir();
        using var vectors = Vectors(3, 32);
        WriteA1111Pt(dir.File(file), vectors, parameterDict);
        using var e = TextualInversionEmbedding.Read(dir.File(file));
        Assert.Equal(Path.GetFileNameWithoutExtension(file), e.Name);
        Assert.Equal(3, e.VectorCount);
        Assert.True(torch.equal(vectors, e.Vectors).all().item<bool>());
        Assert.Equal(TextualInversionEmbedding.FileShortHash(dir.File(file)), e.ShortHash);
        Assert.Matches("^[0-9a-f]{12}$", e.ShortHash!);
    }

    [Fact]
    public void Kohya_and_diffusers_embedding_files_are_read()
    {
        using var dir = Fixtures.TempDir();
        using var two = Vectors(2, 32);
        TextualInversionEmbedding.Write(dir.File("kohya.safetensors"), two, new Dictionary<string, string> { ["ss_steps"] = "5" }, ScalarType.Float16);
        using (var f = SafetensorsFile.Open(dir.File("kohya.safetensors")))
        {
            Assert.Equal(["emb_params"], f.Keys);
            Assert.Equal("F16", f["emb_params"].DType);
            Assert.Equal([2L, 32], f["emb_params"].Shape);
        }
        using (var kohya = TextualInversionEmbedding.Read(dir.File("kohya.safetensors")))
            Fixtures.AssertClose(two, kohya.Vectors, 1e-3, "fp16 round trip");

        // diffusers' learned_embeds: one tensor named after the token, a single vector.
        using var one = Vectors(1, 32, 2).squeeze(0);
        Safetensors.Save(dir.File("cat-toy.safetensors"), [new KeyValuePair<string, Tensor>("<cat-toy>", one)]);
        TorchZipWriter.WriteStateDict(dir.File("learned_embeds.bin"), [("<cat-toy>", one)], wrap: false);
        foreach (var name in new[] { "cat-toy.safetensors", "learned_embeds.bin" })
        {
            using var e = TextualInversionEmbedding.Read(dir.File(name));
            Assert.Equal(1, e.VectorCount);
            Assert.True(torch.equal(one, e.Vectors[0]).all().item<bool>(), name);
        }
    }

    [Fact]
    public void Sdxl_and_unknown_embedding_files_are_refused_with_one_line()
    {
        using var dir = Fixtures.TempDir();
        Safetensors.Save(dir.File("xl.safetensors"), [new("clip_l", Vectors(2, 768)), new("clip_g", Vectors(2, 1280))]);
        var xl = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("xl.safetensors")));
        Assert.Contains("is an SDXL embedding (clip_l + clip_g)", xl.Message);
        Safetensors.Save(dir.File("two.safetensors"), [new("a", Vectors(1, 32)), new("b", Vectors(1, 32))]);
        var two = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("two.safetensors")));
        Assert.Contains("not a textual-inversion embedding sdlora can read (2 tensors (a, b) and no emb_params)", two.Message);
        foreach (var e in new[] { xl, two }) Assert.DoesNotContain('\n', e.Message);

        using var sd2 = new TextualInversionEmbedding("sd2", Vectors(1, 1024));
        var wide = Assert.Throws<SdLoraException>(() => sd2.CheckDimension(768));
        Assert.Equal("embedding sd2: its vectors are 1024 wide (an SD2.x embedding), but this model's text encoder takes 768; use an embedding trained for this model family", wide.Message);
    }

    // ---------------------------------------------------------------- prompts

    private static PromptEmbeddings Embeddings(EmbeddingLibrary library, int? dim = null) => new(library, Clip, Clip.VocabSize, dim);

    [Fact]
    public void An_embedding_name_in_a_prompt_becomes_its_vectors_and_counts_as_them()
    {
        using var sks = new TextualInversionEmbedding("sks", Vectors(2, 32));
        using var style = new TextualInversionEmbedding("my-style", Vectors(3, 32));
        using var library = new EmbeddingLibrary(null, [sks, style]);
        var embeddings = Embeddings(library);
        var t = PromptChunks.Tokenize(Clip, "a photo of sks dog in (my-style:1.2)", embeddings: embeddings);
        int first = Clip.VocabSize;
        Assert.Equal([.. Clip.Encode("a photo of"), first, first + 1, .. Clip.Encode("dog in"), first + 2, first + 3, first + 4], t.Chunks[0].PromptIds);
        Assert.Equal(10, t.TokenCount);
        Assert.Equal([1f, 1f, 1f, 1f, 1f, 1f, 1f, 1.2f, 1.2f, 1.2f], t.Chunks[0].Weights[1..11]);
        Assert.Equal(["sks", "my-style"], embeddings.Used.Select(e => e.Name));
        Assert.Equal("sks[1]", embeddings.TokenOf(first + 1));
        using var rows = embeddings.Rows()!;
        Assert.Equal([5L, 32], rows.shape);
        // A word that only contains the name is left alone.
        Assert.Equal(Clip.Encode("asks sksdog"), PromptChunks.Tokenize(Clip, "asks sksdog", embeddings: Embeddings(library)).Chunks[0].PromptIds);
    }

    [Fact]
    public void An_embedding_that_does_not_fit_the_chunk_starts_the_next_one_as_in_A1111()
    {
        using var four = new TextualInversionEmbedding("sks", Vectors(4, 32));
        using var library = new EmbeddingLibrary(null, [four]);
        var prompt = string.Join(" ", Enumerable.Repeat("cat", 73)) + " sks";
        var t = PromptChunks.Tokenize(Clip, prompt, commaBacktrack: 0, embeddings: Embeddings(library));
        Assert.Equal(2, t.Chunks.Count);
        Assert.Equal(73, t.Chunks[0].Length);
        Assert.Equal(Enumerable.Range(Clip.VocabSize, 4), t.Chunks[1].PromptIds);
        Assert.Equal(75 + 4, t.TokenCount);
    }

    [Fact]
    public void Embedding_files_are_read_only_when_a_prompt_uses_them()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllText(dir.File("broken.pt"), "<html>not an embedding</html>");
        using var library = new EmbeddingLibrary(dir.Path);
        Assert.Equal(Clip.Encode("a photo"), PromptChunks.Tokenize(Clip, "a photo", embeddings: Embeddings(library)).Chunks[0].PromptIds);
        var e = Assert.Throws<SdLoraException>(() => PromptChunks.Tokenize(Clip, "a broken photo", embeddings: Embeddings(library)));
        Assert.Contains("broken.pt", e.Message);
    }

    [Fact]
    public void Tokenize_counts_an_embedding_as_its_vectors()
    {
        using var dir = Fixtures.TempDir();
        using var v = Vectors(2, 768);
        TextualInversionEmbedding.Write(dir.File("sks.safetensors"), v, new Dictionary<string, string>());
        var report = TokenizeCommand.Analyse("a photo of sks dog", dir.Path);
        Assert.Equal(6, report.TokenCount);
        Assert.Equal(["a</w>", "photo</w>", "of</w>", "sks[0]", "sks[1]", "dog</w>"], report.Chunks[0].Tokens);
        Assert.Equal(new TokenizeCommand.EmbeddingReport("sks", 2, TextualInversionEmbedding.FileShortHash(dir.File("sks.safetensors"))), report.Embeddings.Single());
        var plain = TokenizeCommand.Analyse("a photo of sks dog");
        Assert.Equal(5, plain.TokenCount);
    }

    // ---------------------------------------------------------------- generation

    [Fact]
    public void Generation_uses_embeddings_from_the_folder_records_their_hash_and_refuses_other_families()
    {
        using var dir = Fixtures.TempDir();
        var embeddings = Path.Combine(dir.Path, "embeddings");
        Directory.CreateDirectory(embeddings);
        using var v = Vectors(2, 32, 5);
        TextualInversionEmbedding.Write(Path.Combine(embeddings, "sks.safetensors"), v, new Dictionary<string, string>());
        TextualInversionEmbedding.Write(Path.Combine(embeddings, "wide.safetensors"), Vectors(1, 768), new Dictionary<string, string>());
        using var model = StableDiffusionModel.Load(Fixtures.CopiedSet("tiny-sd15"));
        var pipeline = new Txt2ImgPipeline(model);
        var options = new Txt2ImgOptions
        {
            Prompt = "a photo of sks dog", NegativePrompt = "blurry", Width = 64, Height = 64, Steps = 2, Seed = 3, Sampler = "DDIM",
            EmbeddingsDir = embeddings, OutputDir = dir.File("out"),
        };
        var with = pipeline.Generate(options).Images.Single();
        var without = pipeline.Generate(options with { EmbeddingsDir = null, OutputDir = null }).Images.Single();
        Assert.Null(model.TextEncoder.text_model.embeddings.AddedTokens);
        Assert.NotEqual(with.Image.Pixels, without.Image.Pixels);

        string hash = TextualInversionEmbedding.FileShortHash(Path.Combine(embeddings, "sks.safetensors"));
        var infotext = PngFile.ReadText(with.Path!)["parameters"];
        Assert.Contains($"TI hashes: \"sks: {hash}\"", infotext);
        Assert.Equal([new KeyValuePair<string, string>("sks", hash)], GenerationParameters.Parse(infotext).TextualInversionHashes);
        Assert.Empty(without.Parameters.TextualInversionHashes);

        var e = Assert.Throws<SdLoraException>(() => pipeline.Generate(options with { Prompt = "a photo", NegativePrompt = "wide", OutputDir = null }));
        Assert.StartsWith($"embedding {Path.Combine(embeddings, "wide.safetensors")}: its vectors are 768 wide (an SD1.x embedding), but this model's text encoder takes 32", e.Message);
    }
}
