using SdLora.IO;
using SdLora.Tests.Checkpoints;
using SdLora.Text;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Text;

/// <summary>
/// The embedding readers' rarer layouts and their refusals (one line naming the file and the fix), the
/// <see cref="TextualInversionEmbedding"/> value itself, and the folder library: each test pins one behaviour a user
/// of A1111-style embedding folders relies on.
/// </summary>
public class EmbeddingFileTests
{
    private static Tensor Vectors(int n, int dim, int seed = 1)
    {
        using var g = new Generator((ulong)seed, CPU);
        return torch.randn([n, dim], generator: g);
    }

    private static Tensor Values(float[] values, params long[] shape) => torch.tensor(values, shape);

    private static void AssertSame(Tensor expected, Tensor actual)
    {
        Assert.Equal(expected.shape, actual.shape);
        Assert.Equal(ScalarType.Float32, actual.dtype);
        Assert.Equal(expected.data<float>().ToArray(), actual.data<float>().ToArray());
    }

    private const string Fix = "; use an A1111 .pt or a safetensors file with emb_params";

    // ------------------------------------------------------------------ layouts

    [Fact]
    public void Kohya_emb_params_is_chosen_when_a_safetensors_file_holds_other_tensors_too()
    {
        using var dir = Fixtures.TempDir();
        using var words = Values([1, 2, 3, 4, 5, 6], 2, 3);
        using var other = Values([9, 9, 9], 1, 3);
        Safetensors.Save(dir.File("w.safetensors"), [new("a_first", other), new("emb_params", words), new("z_last", other)]);
        using var e = TextualInversionEmbedding.Read(dir.File("w.safetensors"));
        AssertSame(words, e.Vectors);
    }

    [Fact]
    public void Kohya_emb_params_is_chosen_when_a_pickle_holds_other_tensors_too()
    {
        using var dir = Fixtures.TempDir();
        using var words = Values([1, 2, 3, 4, 5, 6], 2, 3);
        using var other = Values([9, 9, 9], 1, 3);
        TorchZipWriter.WriteStateDict(dir.File("w.bin"), [("a_first", other), ("emb_params", words)], wrap: false);
        using var e = TextualInversionEmbedding.Read(dir.File("w.bin"));
        AssertSame(words, e.Vectors);
    }

    [Fact]
    public void An_upper_case_safetensors_extension_is_read_as_safetensors_and_named_after_the_file()
    {
        using var dir = Fixtures.TempDir();
        using var words = Values([1, 2, 3, 4], 2, 2);
        TextualInversionEmbedding.Write(dir.File("My Style.SAFETENSORS"), words, new Dictionary<string, string>());
        using var e = TextualInversionEmbedding.Read(dir.File("My Style.SAFETENSORS"));
        Assert.Equal("My Style", e.Name);
        Assert.Equal(dir.File("My Style.SAFETENSORS"), e.Path);
        AssertSame(words, e.Vectors);
        using var renamed = TextualInversionEmbedding.Read(dir.File("My Style.SAFETENSORS"), "ohwx");
        Assert.Equal("ohwx", renamed.Name);
    }

    [Fact]
    public void A_single_vector_pickle_under_the_token_name_becomes_one_row()
    {
        // diffusers' learned_embeds.bin: {"<token>": tensor[dim]}.
        using var dir = Fixtures.TempDir();
        using var one = Values([0.5f, -1, 2], 3);
        TorchZipWriter.WriteStateDict(dir.File("learned_embeds.bin"), [("<my-token>", one)], wrap: false);
        using var e = TextualInversionEmbedding.Read(dir.File("learned_embeds.bin"));
        Assert.Equal("learned_embeds", e.Name);
        Assert.Equal([1L, 3], e.Vectors.shape);
        Assert.Equal([0.5f, -1, 2], e.Vectors.data<float>().ToArray());
    }

    [Fact]
    public void Fp16_vectors_are_read_as_fp32()
    {
        using var dir = Fixtures.TempDir();
        using var half = Values([0.25f, 1.5f, -3], 1, 3).to(ScalarType.Float16);
        TorchZipWriter.WriteStateDict(dir.File("half.pt"), [("emb_params", half)], wrap: false);
        using var e = TextualInversionEmbedding.Read(dir.File("half.pt"));
        Assert.Equal(ScalarType.Float32, e.Vectors.dtype);
        Assert.Equal([0.25f, 1.5f, -3], e.Vectors.data<float>().ToArray());
    }

    // ------------------------------------------------------------------ refusals

    [Fact]
    public void A_missing_embedding_file_is_named()
    {
        using var dir = Fixtures.TempDir();
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("gone.pt")));
        Assert.Equal($"embedding {dir.File("gone.pt")}: file not found", e.Message);
    }

    [Fact]
    public void A_tensor_that_is_not_a_matrix_is_refused()
    {
        using var dir = Fixtures.TempDir();
        Safetensors.Save(dir.File("cube.safetensors"), [new("emb_params", torch.zeros(1, 2, 4))]);
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("cube.safetensors")));
        Assert.Equal($"embedding {dir.File("cube.safetensors")}: its tensor has shape [1,2,4], not [vectors, dim]; it is not a textual-inversion embedding sdlora can use", e.Message);
    }

    [Fact]
    public void An_sdxl_pickle_embedding_is_refused()
    {
        using var dir = Fixtures.TempDir();
        TorchZipWriter.WriteStateDict(dir.File("xl.pt"), [("clip_g", torch.zeros(2, 1280)), ("clip_l", torch.zeros(2, 768))], wrap: false);
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("xl.pt")));
        Assert.Equal($"embedding {dir.File("xl.pt")}: is an SDXL embedding (clip_l + clip_g); sdlora supports Stable Diffusion 1.x embeddings only", e.Message);
    }

    [Fact]
    public void An_sdxl_safetensors_embedding_is_refused_even_with_emb_params_beside_it()
    {
        using var dir = Fixtures.TempDir();
        Safetensors.Save(dir.File("xl.safetensors"), [new("clip_g", torch.zeros(2, 1280)), new("clip_l", torch.zeros(2, 768)), new("emb_params", torch.zeros(2, 768))]);
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("xl.safetensors")));
        Assert.Equal($"embedding {dir.File("xl.safetensors")}: is an SDXL embedding (clip_l + clip_g); sdlora supports Stable Diffusion 1.x embeddings only", e.Message);
    }

    [Fact]
    public void A_pickle_without_tensors_is_refused()
    {
        using var dir = Fixtures.TempDir();
        TorchZipWriter.WriteStateDict(dir.File("empty.pt"), [], wrap: false);
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("empty.pt")));
        Assert.Equal($"embedding {dir.File("empty.pt")}: not a textual-inversion embedding sdlora can read (it holds no tensor){Fix}", e.Message);
    }

    [Fact]
    public void A_pickle_of_several_tensors_is_refused_naming_the_first_four()
    {
        using var dir = Fixtures.TempDir();
        TorchZipWriter.WriteStateDict(dir.File("five.pt"), new[] { "a", "b", "c", "d", "e" }.Select(n => (n, torch.zeros(1, 4))), wrap: false);
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("five.pt")));
        Assert.Equal($"embedding {dir.File("five.pt")}: not a textual-inversion embedding sdlora can read (it holds 5 tensors (a, b, c, d)){Fix}", e.Message);
    }

    [Fact]
    public void A_safetensors_file_of_several_tensors_is_refused_naming_the_first_four()
    {
        using var dir = Fixtures.TempDir();
        Safetensors.Save(dir.File("five.safetensors"), new[] { "a", "b", "c", "d", "e" }.Select(n => new KeyValuePair<string, Tensor>(n, torch.zeros(1, 4))));
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("five.safetensors")));
        Assert.Equal($"embedding {dir.File("five.safetensors")}: not a textual-inversion embedding sdlora can read (5 tensors (a, b, c, d) and no emb_params){Fix}", e.Message);
    }

    /// <summary>A1111's layout with <c>string_to_param</c> set to <paramref name="writeParam"/>'s value.</summary>
    private static void WriteStringToParam(string path, Action<PickleWriter> writeParam, int storages)
    {
        var w = new PickleWriter();
        w.EmptyDict().Put().Mark().Str("string_to_param");
        writeParam(w);
        w.Str("name").Str("x").SetItems();
        TorchZipWriter.Write(path, w.Stop().ToArray(), Enumerable.Range(0, storages).ToDictionary(i => i.ToString(), _ => new byte[4 * 4]));
    }

    [Fact]
    public void A1111_string_to_param_with_two_terms_is_refused()
    {
        using var dir = Fixtures.TempDir();
        WriteStringToParam(dir.File("two.pt"), w => w.EmptyDict().Put().Mark()
            .Str("*").Tensor("FloatStorage", "0", 4, 0, new long[] { 1, 4 }, new long[] { 4, 1 })
            .Str("**").Tensor("FloatStorage", "1", 4, 0, new long[] { 1, 4 }, new long[] { 4, 1 }).SetItems(), storages: 2);
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("two.pt")));
        Assert.Equal($"embedding {dir.File("two.pt")}: not a textual-inversion embedding sdlora can read (string_to_param holds 2 tensors; an embedding has one){Fix}", e.Message);
    }

    [Fact]
    public void A1111_string_to_param_that_is_not_a_dict_is_refused()
    {
        using var dir = Fixtures.TempDir();
        WriteStringToParam(dir.File("odd.pt"), w => w.Int(7), storages: 0);
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("odd.pt")));
        Assert.Equal($"embedding {dir.File("odd.pt")}: not a textual-inversion embedding sdlora can read (string_to_param is neither a dict nor a ParameterDict){Fix}", e.Message);
    }

    [Fact]
    public void A1111_string_to_param_with_a_single_vector_becomes_one_row()
    {
        using var dir = Fixtures.TempDir();
        var w = new PickleWriter();
        w.EmptyDict().Put().Mark().Str("string_to_param").EmptyDict().Put().Mark().Str("*").Tensor("FloatStorage", "0", 2, 0, new long[] { 2 }, new long[] { 1 }).SetItems().SetItems();
        TorchZipWriter.Write(dir.File("one.pt"), w.Stop().ToArray(), new Dictionary<string, byte[]> { ["0"] = [.. BitConverter.GetBytes(1.5f), .. BitConverter.GetBytes(-2f)] });
        using var e = TextualInversionEmbedding.Read(dir.File("one.pt"));
        Assert.Equal([1L, 2], e.Vectors.shape);
        Assert.Equal([1.5f, -2f], e.Vectors.data<float>().ToArray());
    }

    [Fact]
    public void An_empty_safetensors_embedding_is_refused_naming_the_file_once()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllBytes(dir.File("empty.safetensors"), []);
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("empty.safetensors")));
        Assert.Equal($"embedding {dir.File("empty.safetensors")}: not a valid safetensors file (only 0 bytes, shorter than the 8-byte header length); re-download or re-export it", e.Message);
    }

    [Fact]
    public void A_pt_embedding_that_is_not_a_zip_is_refused_as_an_embedding_naming_the_file_once()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllText(dir.File("page.pt"), "<html>not an embedding</html>");
        var e = Assert.Throws<SdLoraException>(() => TextualInversionEmbedding.Read(dir.File("page.pt")));
        Assert.Equal($"embedding {dir.File("page.pt")}: is not a PyTorch zip checkpoint (it does not start with a zip header); the file is damaged or of another kind; re-download it or use a .safetensors version", e.Message);
    }

    // ------------------------------------------------------------------ the value

    [Fact]
    public void Vectors_must_be_a_non_empty_matrix()
    {
        using var row = torch.zeros(4);
        var flat = Assert.Throws<ArgumentException>(() => new TextualInversionEmbedding("x", row));
        Assert.Equal("embedding vectors must be [n, dim] with n >= 1, got [4] (Parameter 'vectors')", flat.Message);
        using var none = torch.zeros(0, 8);
        var empty = Assert.Throws<ArgumentException>(() => new TextualInversionEmbedding("x", none));
        Assert.Equal("embedding vectors must be [n, dim] with n >= 1, got [0,8] (Parameter 'vectors')", empty.Message);
    }

    [Fact]
    public void An_embedding_keeps_its_own_fp32_copy_of_the_vectors()
    {
        using var source = Values([1, 2, 3, 4], 2, 2);
        using var e = new TextualInversionEmbedding("x", source);
        source.fill_(0); // a training run goes on changing its tensor
        Assert.Equal([1f, 2, 3, 4], e.Vectors.data<float>().ToArray());
        using var bf16 = Values([1, 2], 1, 2).to(ScalarType.BFloat16);
        using var fromBf16 = new TextualInversionEmbedding("y", bf16);
        Assert.Equal(ScalarType.Float32, fromBf16.Vectors.dtype);
        Assert.Equal(2, e.VectorCount);
        Assert.Equal(2, e.Dimension);
        Assert.Null(e.Path);
        Assert.Null(e.ShortHash);
    }

    [Fact]
    public void Short_hash_is_the_first_12_hex_digits_of_the_files_sha256()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllText(dir.File("abc.bin"), "abc");
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad (FIPS 180-2 test vector).
        Assert.Equal("ba7816bf8f01", TextualInversionEmbedding.FileShortHash(dir.File("abc.bin")));
        using var v = torch.zeros(1, 2);
        using var fromFile = new TextualInversionEmbedding("abc", v, dir.File("abc.bin"));
        Assert.Equal("ba7816bf8f01", fromFile.ShortHash);
        using var given = new TextualInversionEmbedding("abc", v, dir.File("abc.bin"), "0123456789ab");
        Assert.Equal("0123456789ab", given.ShortHash);
    }

    [Theory]
    [InlineData(1280, " (an SDXL embedding)")]
    [InlineData(2048, " (an SDXL embedding)")]
    [InlineData(768, " (an SD1.x embedding)")]
    [InlineData(512, "")]
    public void A_vector_width_the_text_encoder_does_not_take_is_refused_naming_the_family(int width, string family)
    {
        using var e = new TextualInversionEmbedding("style", torch.zeros(1, width), "/data/embeddings/style.pt", "000000000000");
        var ex = Assert.Throws<SdLoraException>(() => e.CheckDimension(1024));
        Assert.Equal($"embedding /data/embeddings/style.pt: its vectors are {width} wide{family}, but this model's text encoder takes 1024; use an embedding trained for this model family", ex.Message);
        e.CheckDimension(width); // its own width is accepted
    }

    [Fact]
    public void Write_stores_fp32_emb_params_with_the_metadata_by_default()
    {
        using var dir = Fixtures.TempDir();
        using var source = Values([1, 2, 3, 4, 5, 6], 3, 2);
        using var transposed = source.t(); // not contiguous: written as its values, row by row
        TextualInversionEmbedding.Write(dir.File("w.safetensors"), transposed, new Dictionary<string, string> { ["ss_steps"] = "7" });
        using var f = SafetensorsFile.Open(dir.File("w.safetensors"));
        Assert.Equal(["emb_params"], f.Keys);
        Assert.Equal("F32", f["emb_params"].DType);
        Assert.Equal("7", f.Metadata["ss_steps"]);
        using var back = f.Load("emb_params");
        Assert.Equal([1f, 3, 5, 2, 4, 6], back.data<float>().ToArray());
    }

    // ------------------------------------------------------------------ library

    [Fact]
    public void A_library_finds_embedding_files_in_sub_folders_by_extension()
    {
        using var dir = Fixtures.TempDir();
        Directory.CreateDirectory(dir.File("sub"));
        foreach (var f in new[] { "one.pt", "sub/two.SAFETENSORS", "three.bin", "notes.txt", "four.ckpt" })
            File.WriteAllText(dir.File(f), "x");
        using var library = new EmbeddingLibrary(dir.Path);
        Assert.Equal(["one", "three", "two"], library.Names.Order(StringComparer.Ordinal));
        using var missing = new EmbeddingLibrary(dir.File("no-such-folder"));
        Assert.Empty(missing.Names);
    }

    [Fact]
    public void Of_two_files_with_one_name_the_first_path_in_ordinal_order_is_used()
    {
        using var dir = Fixtures.TempDir();
        Directory.CreateDirectory(dir.File("a"));
        Directory.CreateDirectory(dir.File("b"));
        TextualInversionEmbedding.Write(dir.File("b/sks.safetensors"), torch.full([1, 2], 2f), new Dictionary<string, string>());
        TextualInversionEmbedding.Write(dir.File("a/sks.safetensors"), torch.full([1, 2], 1f), new Dictionary<string, string>());
        using var library = new EmbeddingLibrary(dir.Path);
        Assert.Equal(dir.File("a/sks.safetensors"), library.Get("sks").Path);
    }

    [Fact]
    public void Get_reads_a_file_once_in_any_case_and_refuses_unknown_names()
    {
        using var dir = Fixtures.TempDir();
        TextualInversionEmbedding.Write(dir.File("Sks.safetensors"), torch.ones(1, 2), new Dictionary<string, string>());
        var library = new EmbeddingLibrary(dir.Path);
        var first = library.Get("SKS");
        Assert.Same(first, library.Get("sks"));
        var e = Assert.Throws<KeyNotFoundException>(() => library.Get("ohwx"));
        Assert.Equal("no embedding called ohwx", e.Message);
        library.Dispose();
        Assert.True(first.Vectors.IsInvalid, "a file the library read is disposed with it");
    }

    [Fact]
    public void Embeddings_held_in_memory_win_over_files_and_stay_the_callers()
    {
        using var dir = Fixtures.TempDir();
        TextualInversionEmbedding.Write(dir.File("sks.safetensors"), torch.ones(1, 2), new Dictionary<string, string>());
        using var held = new TextualInversionEmbedding("SKS", torch.full([3, 2], 5f));
        var library = new EmbeddingLibrary(dir.Path, [held]);
        Assert.Same(held, library.Get("sks"));
        Assert.Equal(["sks"], library.Names.Select(n => n.ToLowerInvariant()));
        library.Dispose();
        Assert.False(held.Vectors.IsInvalid, "the caller's embedding is not disposed by the library");
        Assert.Equal(6L, held.Vectors.numel());
    }

    // ------------------------------------------------------------------ in prompts

    private static readonly ClipTokenizer Clip = ClipTokenizer.Default;

    [Fact]
    public void A_longer_embedding_name_wins_over_a_shorter_one_it_starts_with()
    {
        using var sks = new TextualInversionEmbedding("sks", torch.zeros(1, 4));
        using var sksDog = new TextualInversionEmbedding("sks dog", torch.ones(2, 4));
        using var library = new EmbeddingLibrary(null, [sks, sksDog]);
        var embeddings = new PromptEmbeddings(library, Clip, Clip.VocabSize, null);
        var t = PromptChunks.Tokenize(Clip, "sks dog and sks cat", embeddings: embeddings);
        int f = Clip.VocabSize;
        int and = Clip.Encode("and").Single(), cat = Clip.Encode("cat").Single();
        Assert.Equal([f, f + 1, and, f + 2, cat], t.Chunks[0].PromptIds);
        Assert.Equal(["sks dog", "sks"], embeddings.Used.Select(e => e.Name));
        Assert.Equal("sks", embeddings.TokenOf(f + 2)); // one vector: its plain name
        Assert.Equal("a</w>", embeddings.TokenOf(Clip.Encode("a").Single()));
    }

    [Fact]
    public void An_embedding_whose_name_has_no_tokens_is_never_matched()
    {
        using var blank = new TextualInversionEmbedding(" ", torch.ones(1, 4));
        using var sks = new TextualInversionEmbedding("sks", torch.ones(1, 4));
        using var library = new EmbeddingLibrary(null, [blank, sks]);
        var embeddings = new PromptEmbeddings(library, Clip, Clip.VocabSize, null);
        Assert.Equal([.. Clip.Encode("a"), Clip.VocabSize], PromptChunks.Tokenize(Clip, "a  sks", embeddings: embeddings).Chunks[0].PromptIds);
        Assert.Equal(["sks"], embeddings.Used.Select(e => e.Name));
    }

    [Fact]
    public void A_name_cut_off_by_the_end_of_the_prompt_is_ordinary_text()
    {
        using var sksDog = new TextualInversionEmbedding("sks dog", torch.ones(2, 4));
        using var library = new EmbeddingLibrary(null, [sksDog]);
        var embeddings = new PromptEmbeddings(library, Clip, Clip.VocabSize, null);
        Assert.Equal(Clip.Encode("a photo of sks"), PromptChunks.Tokenize(Clip, "a photo of sks", embeddings: embeddings).Chunks[0].PromptIds);
        Assert.Empty(embeddings.Used);
        Assert.Null(embeddings.Rows());
    }

    [Fact]
    public void An_embedding_used_twice_gets_its_ids_and_rows_once()
    {
        using var sks = new TextualInversionEmbedding("sks", Values([1, 2, 3, 4], 2, 2));
        using var library = new EmbeddingLibrary(null, [sks]);
        var embeddings = new PromptEmbeddings(library, Clip, 1000, null);
        var t = PromptChunks.Tokenize(Clip, "sks, sks", embeddings: embeddings);
        Assert.Equal([1000, 1001, Clip.CommaId, 1000, 1001], t.Chunks[0].PromptIds);
        using var rows = embeddings.Rows()!;
        Assert.Equal([1f, 2, 3, 4], rows.data<float>().ToArray());
    }

    [Fact]
    public void Rows_stack_the_used_embeddings_in_order_of_first_use()
    {
        using var a = new TextualInversionEmbedding("alpha", Values([1, 1], 1, 2));
        using var b = new TextualInversionEmbedding("beta", Values([2, 2, 3, 3], 2, 2));
        using var library = new EmbeddingLibrary(null, [a, b]);
        var embeddings = new PromptEmbeddings(library, Clip, 500, null);
        var t = PromptChunks.Tokenize(Clip, "beta alpha", embeddings: embeddings);
        Assert.Equal([500, 501, 502], t.Chunks[0].PromptIds);
        using var rows = embeddings.Rows()!;
        Assert.Equal([3L, 2], rows.shape);
        Assert.Equal([2f, 2, 3, 3, 1, 1], rows.data<float>().ToArray());
        Assert.Equal(["beta[0]", "beta[1]", "alpha"], new[] { 500, 501, 502 }.Select(embeddings.TokenOf));
    }

    [Fact]
    public void Hashes_list_the_used_embeddings_that_have_one_in_order_of_use()
    {
        using var a = new TextualInversionEmbedding("alpha", torch.zeros(1, 2), shortHash: "aaaaaaaaaaaa");
        using var b = new TextualInversionEmbedding("beta", torch.zeros(1, 2));
        using var c = new TextualInversionEmbedding("gamma", torch.zeros(1, 2), shortHash: "cccccccccccc");
        using var library = new EmbeddingLibrary(null, [a, b, c]);
        var embeddings = new PromptEmbeddings(library, Clip, Clip.VocabSize, null);
        PromptChunks.Tokenize(Clip, "gamma beta alpha", embeddings: embeddings);
        Assert.Equal(new KeyValuePair<string, string>[] { new("gamma", "cccccccccccc"), new("alpha", "aaaaaaaaaaaa") }, embeddings.Hashes);
    }

    [Fact]
    public void A_used_embedding_of_another_width_is_refused_only_when_a_width_is_given()
    {
        using var narrow = new TextualInversionEmbedding("sks", torch.zeros(1, 16));
        using var library = new EmbeddingLibrary(null, [narrow]);
        var e = Assert.Throws<SdLoraException>(() => PromptChunks.Tokenize(Clip, "a sks", embeddings: new PromptEmbeddings(library, Clip, Clip.VocabSize, 32)));
        Assert.Equal("embedding sks: its vectors are 16 wide, but this model's text encoder takes 32; use an embedding trained for this model family", e.Message);
        var unchecked_ = PromptChunks.Tokenize(Clip, "a sks", embeddings: new PromptEmbeddings(library, Clip, Clip.VocabSize, null));
        Assert.Equal([Clip.Encode("a").Single(), Clip.VocabSize], unchecked_.Chunks[0].PromptIds);
    }
}
