using System.Text.Json;
using SdLora.Text;
using Xunit;

namespace SdLora.Tests.Text;

/// <summary>The tokenizer against the golden set's tokenizer fixture (transformers with ftfy) and its tokenizer folder.</summary>
[Trait("Category", "Golden")]
public class ClipTokenizerGoldenTests
{
    private sealed record FixturePrompt(int Index, string Prompt, int[] IdsUntruncated, string[] Tokens, long[] InputIds);

    // The reference is transformers with ftfy: where it differs from the original CLIP tokenizer the fixture
    // stores its own untruncated list as hf_ftfy_ids_untruncated.
    private static FixturePrompt[] Prompts()
    {
        using var json = Fixtures.Json("tokenizer");
        using var file = Fixtures.Open("tokenizer");
        using var ids = file.Load("input_ids");
        int length = (int)ids.shape[1];
        var rows = ids.data<long>().ToArray();
        var prompts = json.RootElement.GetProperty("prompts").EnumerateArray().Select((p, i) =>
        {
            var untruncated = p.TryGetProperty("hf_ftfy_ids_untruncated", out var hf) ? hf : p.GetProperty("ids_untruncated");
            bool tokensAreHf = !p.TryGetProperty("hf_ftfy_ids_untruncated", out _);
            return new FixturePrompt(i, p.GetProperty("prompt").GetString()!,
                untruncated.EnumerateArray().Select(x => x.GetInt32()).ToArray(),
                tokensAreHf ? p.GetProperty("tokens").EnumerateArray().Select(x => x.GetString()!).ToArray() : [],
                rows.Skip(i * length).Take(length).ToArray());
        }).ToArray();
        Assert.Equal(ids.shape[0], prompts.Length);
        return prompts;
    }

    private static ClipTokenizer FolderTokenizer() => ClipTokenizer.FromDiffusersFolder(Fixtures.Golden("tiny-sd15/tokenizer"));

    /// <summary>The prompt indices of the golden set's tokenizer.json (read when the tests are discovered).</summary>
    public static TheoryData<int> PromptIndices()
    {
        var path = Path.Combine(Fixtures.GoldenDir, "tokenizer.json");
        // Without the file there is one case, which the test skips naming the missing file.
        if (!File.Exists(path)) return new() { 0 };
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        return new(Enumerable.Range(0, doc.RootElement.GetProperty("prompts").GetArrayLength()));
    }

    [SkippableTheory]
    [MemberData(nameof(PromptIndices))]
    public void Embedded_vocab_matches_transformers_input_ids(int index)
    {
        var p = Prompts()[index];
        Assert.Equal(p.InputIds, ClipTokenizer.Default.EncodeForModel(p.Prompt).Select(x => (long)x));
        Assert.Equal(p.IdsUntruncated, ClipTokenizer.Default.Encode(p.Prompt));
        if (p.Tokens.Length > 0) Assert.Equal(p.Tokens, ClipTokenizer.Default.Tokens(p.Prompt));
    }

    [SkippableTheory]
    [MemberData(nameof(PromptIndices))]
    public void Diffusers_folder_vocab_matches_transformers_input_ids(int index)
    {
        var p = Prompts()[index];
        Assert.Equal(p.InputIds, FolderTokenizer().EncodeForModel(p.Prompt).Select(x => (long)x));
    }

    [SkippableFact]
    public void Token_counts_match_fixture_n_tokens()
    {
        using var json = Fixtures.Json("tokenizer");
        using var file = Fixtures.Open("tokenizer");
        using var n = file.Load("n_tokens");
        var expected = n.data<long>().ToArray();
        // n_tokens counts the original CLIP tokenizer, which differs from transformers (our reference) on these prompts.
        var differs = json.RootElement.GetProperty("prompts_where_hf_ftfy_differs_from_clip_orig").EnumerateArray().Select(x => x.GetInt32()).ToHashSet();
        var prompts = Prompts();
        Assert.Equal(expected.Length, prompts.Length);
        foreach (var p in prompts.Where(p => !differs.Contains(p.Index)))
            Assert.True(expected[p.Index] == ClipTokenizer.Default.Encode(p.Prompt).Length, $"prompt {p.Index}: n_tokens");
    }

    [SkippableFact]
    public void Embedded_vocabulary_equals_diffusers_vocab_json()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Fixtures.Golden("tiny-sd15/tokenizer/vocab.json")));
        var tok = ClipTokenizer.Default;
        var vocab = doc.RootElement.EnumerateObject().ToDictionary(e => e.Name, e => e.Value.GetInt32());
        Assert.Equal(vocab.Count, tok.VocabSize);
        foreach (var (token, id) in vocab)
            Assert.True(tok.TokenOf(id) == token, $"id {id}");
        Assert.Equal(vocab["<|startoftext|>"], tok.BosId);
        Assert.Equal(vocab["<|endoftext|>"], tok.EosId);
        Assert.Equal(vocab[",</w>"], tok.CommaId);
    }
}

public class ClipTokenizerTests
{
    [Fact]
    public void Long_prompt_is_truncated_to_75_ids_between_bos_and_eos()
    {
        var ids = ClipTokenizer.Default.EncodeForModel(string.Join(" ", Enumerable.Repeat("dog", 100)));
        Assert.Equal(77, ids.Length);
        Assert.Equal(ClipTokenizer.Bos, ids[0]);
        Assert.All(ids[1..76], id => Assert.Equal(1929, id));
        Assert.Equal(ClipTokenizer.Eos, ids[76]);
    }

    [Fact]
    public void Decode_round_trips_cleaned_text()
    {
        var tok = ClipTokenizer.Default;
        Assert.Equal("a photo of sks dog , 8 k", tok.Decode(tok.Encode("A photo of sks dog, 8k")));
        Assert.Equal("café 🐶", tok.Decode(tok.Encode("Café 🐶")));
    }

    [Theory]
    [InlineData("&#59; &#x41; &#0; &NTILDE;", "&# 5 9 ; a � ñ")] // ';' stays escaped, as ftfy does; upper-cased names decode too
    [InlineData("\u0091quoted\u0092", "' quoted '")]         // C1 controls read as Windows-1252, then uncurled
    [InlineData("ΟΔΟΣ", "οδος")]                              // final sigma
    [InlineData("x\u001b[31mred\u001b[0m", "xred")]           // terminal escapes removed
    public void Cleaning_follows_ftfy_and_python_lower(string input, string expected) =>
        Assert.Equal(expected, ClipTokenizer.Default.Decode(ClipTokenizer.Default.Encode(input)));

    [Fact]
    public void Missing_tokenizer_files_are_a_clear_error()
    {
        using var tmp = Fixtures.TempDir();
        var ex = Assert.Throws<SdLoraException>(() => ClipTokenizer.FromDiffusersFolder(tmp.Path));
        Assert.Contains("vocab.json", ex.Message);

        File.WriteAllText(tmp.File("vocab.json"), "[1,2");
        File.WriteAllText(tmp.File("merges.txt"), "#version: 0.2\na b\n");
        ex = Assert.Throws<SdLoraException>(() => ClipTokenizer.FromDiffusersFolder(tmp.Path));
        Assert.Contains(tmp.File("vocab.json"), ex.Message);

        File.WriteAllText(tmp.File("vocab.json"), "{\"a\": 0, \"<|startoftext|>\": 1, \"<|endoftext|>\": 2}");
        File.WriteAllText(tmp.File("merges.txt"), "#version: 0.2\na b c\n");
        ex = Assert.Throws<SdLoraException>(() => ClipTokenizer.FromDiffusersFolder(tmp.Path));
        Assert.Contains("line 2", ex.Message);
    }
}

/// <summary>
/// sdlora keeps its own BPE merge loop (see docs/libraries.md); this pins it to an independent, maintained
/// byte-level BPE (Microsoft.ML.Tokenizers with the <c>&lt;/w&gt;</c> suffix) on many words no fixture has.
/// </summary>
public class ClipBpeCrossCheckTests
{
    [Fact]
    public void Bpe_merges_equal_microsoft_ml_tokenizers_byte_level_bpe_on_random_words()
    {
        var dir = Fixtures.Golden("tiny-sd15/tokenizer");
        var vocab = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Path.Combine(dir, "vocab.json")))!;
        var merges = File.ReadLines(Path.Combine(dir, "merges.txt")).Skip(1).Where(l => l.Length > 0).ToList();
        var reference = Microsoft.ML.Tokenizers.BpeTokenizer.Create(new Microsoft.ML.Tokenizers.BpeOptions(vocab)
        {
            Merges = merges, EndOfWordSuffix = "</w>", ByteLevel = true,
        });

        // Each string is one CLIP word that cleaning leaves alone: a letter run (Latin, accented, CJK, Greek) or a
        // run of symbols and emoji, so the two sides see the same BPE input.
        var letters = "abcdefghijklmnopqrstuvwxyzéèêüöäßçñøåæœ東京猫犬夜景αβγδ".EnumerateRunes().Select(r => r.ToString()).ToArray();
        var symbols = ".,!?()[]{}:;/%$#@*+=<>~^`\"-_|\\🐶🔥👍🎉✨★→".EnumerateRunes().Select(r => r.ToString()).ToArray();
        var rng = new Random(20240611);
        int checkedWords = 0;
        for (int i = 0; i < 20_000; i++)
        {
            var pool = i % 4 == 3 ? symbols : letters;
            // Mostly common letters, so real merges happen; sometimes anything from the pool.
            var word = string.Concat(Enumerable.Range(0, rng.Next(1, 16)).Select(_ => pool[rng.Next(rng.Next(4) == 0 ? pool.Length : Math.Min(26, pool.Length))]));
            var expected = reference.EncodeToIds(word, considerPreTokenization: false, considerNormalization: false);
            var actual = ClipTokenizer.Default.Encode(word);
            Assert.True(expected.SequenceEqual(actual), $"'{word}': ML.Tokenizers [{string.Join(",", expected)}] vs sdlora [{string.Join(",", actual)}]");
            checkedWords++;
        }
        Assert.Equal(20_000, checkedWords);
    }
}
