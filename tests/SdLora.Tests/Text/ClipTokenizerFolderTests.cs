using System.Text.Json;
using System.Text.Json.Nodes;
using SdLora.Text;
using Xunit;

namespace SdLora.Tests.Text;

/// <summary>
/// A transformers tokenizer folder read and written: a hand-made five-merge vocabulary whose ids can be worked out by
/// hand (byte-level BPE: a word's bytes, <c>&lt;/w&gt;</c> on the last, lowest-ranked pair merged first), every
/// refusal with its whole one-line message, and the folder sdlora writes.
/// </summary>
public class ClipTokenizerFolderTests
{
    // a=0 b=1 c=2 a</w>=3 b</w>=4 c</w>=5 ab</w>=6 ab=7 abc</w>=8 <|startoftext|>=9 <|endoftext|>=10
    private const string TinyVocab = "{\"a\": 0, \"b\": 1, \"c\": 2, \"a</w>\": 3, \"b</w>\": 4, \"c</w>\": 5, \"ab</w>\": 6, \"ab\": 7, \"abc</w>\": 8, " +
                                     "\"<|startoftext|>\": 9, \"<|endoftext|>\": 10}";
    private const string TinyMerges = "#version: 0.2\na b</w>\na b\nab c</w>\n";

    private static ClipTokenizer Folder(TempDir dir, string vocab = TinyVocab, string merges = TinyMerges)
    {
        File.WriteAllText(dir.File("vocab.json"), vocab);
        File.WriteAllText(dir.File("merges.txt"), merges);
        return ClipTokenizer.FromDiffusersFolder(dir.Path);
    }

    [Fact]
    public void A_folder_vocabulary_merges_pairs_by_rank()
    {
        using var dir = Fixtures.TempDir();
        var t = Folder(dir);
        Assert.Equal([6], t.Encode("ab"));       // a + b</w> (rank 0)
        Assert.Equal([8], t.Encode("abc"));      // a + b (rank 1), then ab + c</w> (rank 2)
        Assert.Equal([1, 3], t.Encode("ba"));    // no merge for b + a</w>
        Assert.Equal([10], t.Encode("d"));       // d</w> is not in the vocabulary: <|endoftext|>, as transformers maps unknowns
        Assert.Equal([3, 10, 6], t.Encode("A, AB"));  // upper case is lowered; ",</w>" is unknown here too
        Assert.Equal(9, t.BosId);
        Assert.Equal(10, t.EosId);
        Assert.Equal(-1, t.CommaId);             // no ",</w>" token
        Assert.Equal(11, t.VocabSize);
        Assert.Equal([9L, 6, 10, 10], t.EncodeForModel("ab", maxLength: 4));
    }

    [Fact]
    public void Model_input_keeps_the_first_max_length_minus_two_ids_between_bos_and_eos()
    {
        using var dir = Fixtures.TempDir();
        var t = Folder(dir);
        Assert.Equal([9L, 6, 8, 10], t.EncodeForModel("ab abc ba", maxLength: 4)); // "ba" (1, 3) is cut off
        Assert.Equal([9L, 10], t.EncodeForModel("ab", maxLength: 2));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => t.EncodeForModel("ab", maxLength: 1));
        Assert.Equal("needs room for BOS and EOS (Parameter 'maxLength')", e.Message);
    }

    [Fact]
    public void The_first_line_of_merges_is_a_header_and_blank_lines_are_skipped()
    {
        using var dir = Fixtures.TempDir();
        // With the a b</w> merge on the header line it is not read: "ab" stays two tokens.
        var t = Folder(dir, merges: "a b</w>\n\na b\n\nab c</w>\n");
        Assert.Equal([0, 4], t.Encode("ab"));
        Assert.Equal([8], t.Encode("abc"));
    }

    [Fact]
    public void Only_the_first_48894_merges_are_read_as_clip_and_transformers_do()
    {
        // 49152 - 256 - 2: the vocabulary minus the 256 byte characters and the two specials.
        static string Merges(int filler) =>
            "#version: 0.2\n" + string.Concat(Enumerable.Range(0, filler).Select(i => $"x{i} y{i}\n")) + "a b</w>\n";
        using (var dir = Fixtures.TempDir())
            Assert.Equal([6], Folder(dir, merges: Merges(48893)).Encode("ab")); // the merge is number 48894: read
        using (var dir = Fixtures.TempDir())
            Assert.Equal([0, 4], Folder(dir, merges: Merges(48894)).Encode("ab")); // number 48895: ignored
    }

    [Fact]
    public void Ids_missing_from_a_vocabulary_have_no_token()
    {
        using var dir = Fixtures.TempDir();
        var t = Folder(dir, vocab: "{\"a</w>\": 0, \"<|startoftext|>\": 1, \"<|endoftext|>\": 3}", merges: "#version: 0.2\na b\n");
        Assert.Equal(4, t.VocabSize);
        Assert.Equal("<|endoftext|>", t.TokenOf(3));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => t.TokenOf(2));
        Assert.Equal("token id 2 is not in the vocabulary (Parameter 'id')", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => t.TokenOf(4));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.TokenOf(-1));
    }

    // ------------------------------------------------------------------ refusals

    [Fact]
    public void A_missing_tokenizer_folder_is_named_with_what_to_pass()
    {
        using var dir = Fixtures.TempDir();
        var missing = dir.File("tokenizer");
        var e = Assert.Throws<SdLoraException>(() => ClipTokenizer.FromDiffusersFolder(missing));
        Assert.Equal($"{missing}: tokenizer folder not found; pass the model's 'tokenizer' folder (with vocab.json and merges.txt)", e.Message);
    }

    [Theory]
    [InlineData("vocab.json")]
    [InlineData("merges.txt")]
    public void A_missing_vocabulary_file_is_named(string missingFile)
    {
        using var dir = Fixtures.TempDir();
        foreach (var f in new[] { "vocab.json", "merges.txt" }.Where(f => f != missingFile))
            File.WriteAllText(dir.File(f), f == "vocab.json" ? TinyVocab : TinyMerges);
        var e = Assert.Throws<SdLoraException>(() => ClipTokenizer.FromDiffusersFolder(dir.Path));
        Assert.Equal($"{dir.File(missingFile)}: file not found; a CLIP tokenizer folder needs vocab.json and merges.txt (re-download the model's tokenizer folder)", e.Message);
    }

    [Fact]
    public void A_vocab_json_of_null_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var e = Assert.Throws<SdLoraException>(() => Folder(dir, vocab: "null"));
        Assert.Equal($"{dir.File("vocab.json")}: not a JSON object of token -> id (null); re-download the tokenizer folder", e.Message);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(10_000_001)]
    public void Token_ids_out_of_range_are_refused(int id)
    {
        using var dir = Fixtures.TempDir();
        var e = Assert.Throws<SdLoraException>(() => Folder(dir, vocab: $"{{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1, \"x\": {id}}}"));
        Assert.Equal($"{dir.File("vocab.json")}: token ids must be between 0 and 10,000,000; the file is damaged", e.Message);
    }

    [Theory]
    [InlineData("<|startoftext|>", "<|endoftext|>")]
    [InlineData("<|endoftext|>", "<|startoftext|>")]
    public void A_vocabulary_without_both_special_tokens_is_not_a_clip_tokenizer(string present, string absent)
    {
        using var dir = Fixtures.TempDir();
        var e = Assert.Throws<SdLoraException>(() => Folder(dir, vocab: $"{{\"a\": 0, \"{present}\": 1}}"));
        Assert.Equal($"{dir.File("vocab.json")}: vocabulary has no '{absent}' token; this is not a CLIP tokenizer", e.Message);
    }

    [Fact]
    public void A_merges_file_with_only_a_header_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var e = Assert.Throws<SdLoraException>(() => Folder(dir, merges: "#version: 0.2\n\n"));
        Assert.Equal($"{dir.File("merges.txt")}: no BPE merges found; the merges file is empty or damaged", e.Message);
    }

    [Theory]
    [InlineData("a ")]
    [InlineData(" b")]
    [InlineData("a")]
    public void A_merge_line_without_two_parts_is_refused_with_its_line_number(string line)
    {
        using var dir = Fixtures.TempDir();
        var e = Assert.Throws<SdLoraException>(() => Folder(dir, merges: $"#version: 0.2\na b\n\n{line}\n"));
        Assert.Equal($"{dir.File("merges.txt")}: line 4 is not a BPE merge ('A B'): '{line}'; the merges file is damaged", e.Message);
    }

    // ------------------------------------------------------------------ added words

    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    [InlineData("two words")]
    [InlineData("tab\tword")]
    public void An_added_token_must_be_one_word(string word)
    {
        var e = Assert.Throws<ArgumentException>(() => ClipTokenizer.Default.WithAddedTokens(["sks", word]));
        Assert.Equal($"an added token must be one word (got '{word}') (Parameter 'words')", e.Message);
    }

    [Fact]
    public void The_same_word_twice_in_one_call_is_refused()
    {
        var e = Assert.Throws<SdLoraException>(() => ClipTokenizer.Default.WithAddedTokens(["ohwx", "OHWX"]));
        Assert.Equal("the word 'OHWX' was already added to the tokenizer; choose another token string", e.Message);
    }

    [Fact]
    public void Words_added_in_a_second_call_follow_the_first_ones()
    {
        var clip = ClipTokenizer.Default;
        var one = clip.WithAddedTokens(["sks"]);
        var two = one.WithAddedTokens(["OHWX", "zwx"]);
        Assert.Equal(new Dictionary<string, int> { ["sks"] = 49408, ["ohwx"] = 49409, ["zwx"] = 49410 }, two.AddedTokens.ToDictionary());
        Assert.Equal(49411, two.VocabSize);
        Assert.Equal(new Dictionary<string, int> { ["sks"] = 49408 }, one.AddedTokens.ToDictionary());
        Assert.Equal([49409, 49408, .. clip.Encode("dog")], two.Encode("ohwx sks dog"));
        Assert.Equal(["ohwx", "a</w>", "sks"], two.Tokens("OHWX a SKS"));
    }

    [Fact]
    public void Added_words_are_found_between_punctuation_and_special_tokens()
    {
        var clip = ClipTokenizer.Default;
        var t = clip.WithAddedTokens(["sks"]);
        Assert.Equal([.. clip.Encode("("), 49408, .. clip.Encode(":1.2), a")], t.Encode("(sks:1.2), a"));
        Assert.Equal([ClipTokenizer.Bos, 49408, ClipTokenizer.Eos], t.Encode("<|startoftext|>sks<|endoftext|>"));
    }

    [Fact]
    public void Decoding_an_added_word_keeps_it_apart_from_the_next_word()
    {
        var t = ClipTokenizer.Default.WithAddedTokens(["sks"]);
        Assert.Equal("a photo of sks dog", t.Decode(t.Encode("a photo of SKS dog")));
    }

    // ------------------------------------------------------------------ writing

    [Fact]
    public void Words_added_to_a_tokenizer_are_not_written_into_its_folder()
    {
        using var dir = Fixtures.TempDir();
        ClipTokenizer.Default.WithAddedTokens(["sks"]).WriteDiffusersFolder(dir.Path);
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(dir.File("vocab.json")))!;
        Assert.Equal(49408, vocab.Count);
        Assert.False(vocab.ContainsKey("sks"));
        Assert.Equal(49408, ClipTokenizer.FromDiffusersFolder(dir.Path).VocabSize);
    }

    [Fact]
    public void The_written_folder_states_the_model_length_and_transformers_special_tokens()
    {
        using var dir = Fixtures.TempDir();
        ClipTokenizer.Default.WriteDiffusersFolder(dir.Path, maxLength: 248);
        using var config = JsonDocument.Parse(File.ReadAllText(dir.File("tokenizer_config.json")));
        Assert.Equal(248, config.RootElement.GetProperty("model_max_length").GetInt32());
        Assert.Equal("CLIPTokenizer", config.RootElement.GetProperty("tokenizer_class").GetString());
        Assert.Equal("<|endoftext|>", config.RootElement.GetProperty("pad_token").GetString());
        // The same special tokens as the golden set's tokenizer folder (written by transformers).
        var written = JsonNode.Parse(File.ReadAllText(dir.File("special_tokens_map.json")));
        var reference = JsonNode.Parse(File.ReadAllText(Fixtures.CopiedSet("tiny-sd15/tokenizer/special_tokens_map.json")));
        Assert.True(JsonNode.DeepEquals(reference, written), written!.ToJsonString());
    }
}
