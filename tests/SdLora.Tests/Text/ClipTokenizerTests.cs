using System.Text.Json;
using SdLora.Text;
using Xunit;

namespace SdLora.Tests.Text;

public class ClipTokenizerTests
{
    private static readonly Lazy<ClipTokenizer> FolderTokenizer =
        new(() => ClipTokenizer.FromDiffusersFolder(Fixtures.Golden("tiny-sd15/tokenizer")));

    private sealed record FixturePrompt(int Index, string Prompt, int[] IdsUntruncated, string[] Tokens, long[] InputIds);

    // The reference is transformers with ftfy: where it differs from the original CLIP tokenizer the fixture
    // stores its own untruncated list as hf_ftfy_ids_untruncated.
    private static readonly Lazy<FixturePrompt[]> Prompts = new(() =>
    {
        using var json = Fixtures.Json("tokenizer");
        using var file = Fixtures.Open("tokenizer");
        using var ids = file.Load("input_ids");
        var rows = ids.data<long>().ToArray();
        return json.RootElement.GetProperty("prompts").EnumerateArray().Select((p, i) =>
        {
            var untruncated = p.TryGetProperty("hf_ftfy_ids_untruncated", out var hf) ? hf : p.GetProperty("ids_untruncated");
            bool tokensAreHf = !p.TryGetProperty("hf_ftfy_ids_untruncated", out _);
            return new FixturePrompt(i, p.GetProperty("prompt").GetString()!,
                untruncated.EnumerateArray().Select(x => x.GetInt32()).ToArray(),
                tokensAreHf ? p.GetProperty("tokens").EnumerateArray().Select(x => x.GetString()!).ToArray() : [],
                rows.Skip(i * 77).Take(77).ToArray());
        }).ToArray();
    });

    public static TheoryData<int> PromptIndices() => [.. Enumerable.Range(0, 23)];

    [Theory]
    [MemberData(nameof(PromptIndices))]
    public void Embedded_vocab_matches_transformers_input_ids(int index)
    {
        var p = Prompts.Value[index];
        Assert.Equal(p.InputIds, ClipTokenizer.Default.EncodeForModel(p.Prompt));
        Assert.Equal(p.IdsUntruncated, ClipTokenizer.Default.Encode(p.Prompt));
        if (p.Tokens.Length > 0) Assert.Equal(p.Tokens, ClipTokenizer.Default.Tokens(p.Prompt));
    }

    [Theory]
    [MemberData(nameof(PromptIndices))]
    public void Diffusers_folder_vocab_matches_transformers_input_ids(int index)
    {
        var p = Prompts.Value[index];
        Assert.Equal(p.InputIds, FolderTokenizer.Value.EncodeForModel(p.Prompt));
    }

    [Fact]
    public void Token_counts_match_fixture_n_tokens()
    {
        using var file = Fixtures.Open("tokenizer");
        using var n = file.Load("n_tokens");
        var expected = n.data<long>().ToArray();
        foreach (var p in Prompts.Value.Where(p => p.Index != 13)) // 13: n_tokens counts the original tokenizer, which unescapes HTML differently
            Assert.True(expected[p.Index] == ClipTokenizer.Default.Encode(p.Prompt).Length, $"prompt {p.Index}: n_tokens");
        Assert.Equal(78, ClipTokenizer.Default.Encode(Prompts.Value[19].Prompt).Length);
    }

    [Fact]
    public void Embedded_vocabulary_equals_diffusers_vocab_json()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Fixtures.Golden("tiny-sd15/tokenizer/vocab.json")));
        var tok = ClipTokenizer.Default;
        Assert.Equal(49408, tok.VocabSize);
        foreach (var entry in doc.RootElement.EnumerateObject())
            Assert.True(tok.TokenOf(entry.Value.GetInt32()) == entry.Name, $"id {entry.Value.GetInt32()}");
        Assert.Equal(ClipTokenizer.Bos, tok.BosId);
        Assert.Equal(ClipTokenizer.Eos, tok.EosId);
        Assert.Equal(267, tok.CommaId);
    }

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
