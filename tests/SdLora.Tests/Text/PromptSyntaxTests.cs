using SdLora.Text;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Text;

/// <summary>
/// A1111 prompt syntax beyond the doctest: weights' signs and forms, escapes inside groups, BREAK on its own lines,
/// LoRA tag forms, and the whole one-line messages for what cannot be read. Expected weights follow A1111's
/// <c>parse_prompt_attention</c> (its regex takes <c>:([+-]?[.\d]+)\)</c> as a weight closer and Python's float()).
/// </summary>
public class PromptSyntaxTests
{
    private static (string, double)[] Parse(string text) =>
        PromptParser.ParseAttention(text).Select(s => (s.IsBreak ? "<BREAK>" : s.Text, s.Weight)).ToArray();

    [Theory]
    [InlineData("(a:-1)", -1.0)]
    [InlineData("(a:+.5)", 0.5)]
    [InlineData("(a:0)", 0.0)]
    [InlineData("(a:2.)", 2.0)]
    public void Explicit_weights_take_a_sign_and_a_bare_decimal_point(string prompt, double weight) =>
        Assert.Equal([("a", weight)], Parse(prompt));

    [Fact]
    public void Escaped_brackets_inside_a_weighted_group_are_literal_text_of_that_weight() =>
        Assert.Equal([("(x)", 1.5)], Parse(@"(\(x\):1.5)"));

    [Fact]
    public void A_lone_backslash_disappears_as_in_A1111()
    {
        Assert.Equal([("ab", 1.0)], Parse(@"a\b"));
        Assert.Equal([("a", 1.0)], Parse(@"a\"));
    }

    [Fact]
    public void An_unclosed_square_bracket_divides_the_rest_by_1_1() =>
        Assert.Equal([("a ", 1.0), ("b c", 1 / 1.1)], Parse("a [b c"));

    [Fact]
    public void Break_on_its_own_line_splits_and_two_breaks_leave_an_empty_segment_between()
    {
        Assert.Equal([("a", 1.0), ("<BREAK>", -1.0), ("b", 1.0)], Parse("a\nBREAK\nb"));
        Assert.Equal([("a", 1.0), ("<BREAK>", -1.0), ("", 1.0), ("<BREAK>", -1.0), ("b", 1.0)], Parse("a BREAK BREAK b"));
    }

    [Fact]
    public void A_malformed_weight_is_refused_quoting_the_prompt()
    {
        var e = Assert.Throws<SdLoraException>(() => PromptParser.ParseAttention("(cat:1.2.3)"));
        Assert.Equal("prompt '(cat:1.2.3)': attention weight ':1.2.3)' is not a number; write e.g. (word:1.2)", e.Message);
        e = Assert.Throws<SdLoraException>(() => PromptParser.ParseAttention("(cat:.)"));
        Assert.Equal("prompt '(cat:.)': attention weight ':.)' is not a number; write e.g. (word:1.2)", e.Message);
    }

    [Fact]
    public void A_long_prompt_is_quoted_by_its_first_57_characters()
    {
        var sixty = new string('x', 52) + "(a:1..)"; // 59 characters: quoted whole
        Assert.Equal($"prompt '{sixty}': attention weight ':1..)' is not a number; write e.g. (word:1.2)",
            Assert.Throws<SdLoraException>(() => PromptParser.ParseAttention(sixty)).Message);
        var exactly60 = new string('x', 53) + "(a:1..)";
        Assert.Equal($"prompt '{exactly60}': attention weight ':1..)' is not a number; write e.g. (word:1.2)",
            Assert.Throws<SdLoraException>(() => PromptParser.ParseAttention(exactly60)).Message);
        var longer = new string('x', 54) + "(a:1..)"; // 61 characters: 57 and "..."
        Assert.Equal($"prompt '{new string('x', 54)}(a:...': attention weight ':1..)' is not a number; write e.g. (word:1.2)",
            Assert.Throws<SdLoraException>(() => PromptParser.ParseAttention(longer)).Message);
    }

    // ------------------------------------------------------------------ LoRA tags

    [Fact]
    public void Lyco_tags_are_loras_too_and_names_and_weights_are_trimmed()
    {
        var (text, loras) = PromptParser.ExtractLoraTags("a <lyco:old style:0.5> b <lora: sks : 0.25 >");
        Assert.Equal("a  b ", text);
        Assert.Equal([new LoraTag("old style", 0.5), new LoraTag("sks", 0.25)], loras);
    }

    [Theory]
    [InlineData("<lora:x:0.2:0.3:te=0.7>", 0.7, 0.3)]
    [InlineData("<lora:x:unet=0.4>", 1.0, 0.4)]
    [InlineData("<lora:x:-0.5>", -0.5, -0.5)]
    [InlineData("<lora:x:0.6:unet=0>", 0.6, 0.0)]
    public void Named_lora_weights_override_positional_ones(string tag, double te, double unet)
    {
        var lora = PromptParser.ExtractLoraTags(tag).Loras.Single();
        Assert.Equal("x", lora.Name);
        Assert.Equal(te, lora.TextEncoderWeight);
        Assert.Equal(unet, lora.UNetWeight);
    }

    [Fact]
    public void A_lora_tag_without_a_name_is_refused()
    {
        var e = Assert.Throws<SdLoraException>(() => PromptParser.ExtractLoraTags("a <lora: :0.5>"));
        Assert.Equal("prompt tag '<lora: :0.5>' has no LoRA name; write <lora:NAME> or <lora:NAME:WEIGHT>", e.Message);
    }

    [Theory]
    [InlineData("<lora:dog:strong>", "strong")]
    [InlineData("<lora:dog:NaN>", "NaN")]
    [InlineData("<lora:dog:1:unet=x>", "x")]
    public void A_lora_weight_that_is_not_a_finite_number_is_refused(string tag, string weight)
    {
        var e = Assert.Throws<SdLoraException>(() => PromptParser.ExtractLoraTags(tag));
        Assert.Equal($"prompt tag '{tag}' has weight '{weight}', which is not a number; write e.g. <lora:dog:0.8>", e.Message);
    }
}

/// <summary>The 75-token chunking at its edges, each case worked out from A1111's <c>tokenize_line</c>.</summary>
public class PromptChunkEdgeTests
{
    private static readonly ClipTokenizer Tok = ClipTokenizer.Default;
    private const int Dog = 1929, Cat = 2368;
    private static string Words(string word, int n) => string.Join(" ", Enumerable.Repeat(word, n));

    [Fact]
    public void A_comma_exactly_20_tokens_back_moves_what_follows_it_with_its_weights()
    {
        // Comma at index 55: when the chunk is full, 75 - 55 = 20 <= 20, so the 19 cats after it move on.
        var t = PromptChunks.Tokenize(Tok, Words("dog", 55) + ", (" + Words("cat", 30) + ":1.5)");
        Assert.Equal([.. Enumerable.Repeat(Dog, 55), Tok.CommaId], t.Chunks[0].PromptIds);
        Assert.Equal(Enumerable.Repeat(Cat, 30), t.Chunks[1].PromptIds);
        Assert.All(t.Chunks[0].Weights, w => Assert.Equal(1f, w));
        Assert.Equal(Enumerable.Repeat(1.5f, 30), t.Chunks[1].Weights[1..31]);
        Assert.Equal(105, t.TokenCount);
    }

    [Fact]
    public void A_comma_21_tokens_back_stays_unless_the_backtrack_allows_21()
    {
        var prompt = Words("dog", 54) + ", " + Words("cat", 30);
        var t = PromptChunks.Tokenize(Tok, prompt);
        Assert.Equal(75, t.Chunks[0].Length);
        Assert.Equal(Enumerable.Repeat(Cat, 10), t.Chunks[1].PromptIds);
        Assert.Equal(85, t.TokenCount);
        var wider = PromptChunks.Tokenize(Tok, prompt, commaBacktrack: 21);
        Assert.Equal(55, wider.Chunks[0].Length);
        Assert.Equal(Enumerable.Repeat(Cat, 30), wider.Chunks[1].PromptIds);
    }

    [Fact]
    public void A_comma_that_arrives_when_the_chunk_is_full_opens_the_next_chunk()
    {
        var t = PromptChunks.Tokenize(Tok, Words("dog", 60) + ", " + Words("dog", 14) + ", cat");
        Assert.Equal(75, t.Chunks[0].Length);
        Assert.Equal([Tok.CommaId, Cat], t.Chunks[1].PromptIds);
        Assert.Equal(77, t.TokenCount);
    }

    [Fact]
    public void A_comma_in_a_closed_chunk_does_not_move_words_of_the_next_one()
    {
        // A1111 forgets the last comma when a chunk closes: the 76th cat just starts chunk three.
        var t = PromptChunks.Tokenize(Tok, Words("dog", 70) + ", dog BREAK " + Words("cat", 80));
        Assert.Equal([72, 75, 5], t.Chunks.Select(c => c.Length));
        Assert.Equal(75 + 75 + 5, t.TokenCount);
    }

    [Fact]
    public void Exactly_75_tokens_fill_one_chunk()
    {
        var t = PromptChunks.Tokenize(Tok, Words("dog", 75));
        Assert.Single(t.Chunks);
        Assert.Equal(75, t.TokenCount);
        Assert.Equal(75, t.TokenLimit);
        Assert.Equal(Tok.EosId, t.Chunks[0].Ids[76]);
    }

    [Fact]
    public void An_embedding_that_exactly_fills_the_chunk_stays_in_it()
    {
        using var four = new TextualInversionEmbedding("sks", zeros(4, 8));
        using var library = new EmbeddingLibrary(null, [four]);
        var t = PromptChunks.Tokenize(Tok, Words("cat", 71) + " sks", commaBacktrack: 0,
            embeddings: new PromptEmbeddings(library, Tok, Tok.VocabSize, null));
        var chunk = Assert.Single(t.Chunks);
        Assert.Equal(Enumerable.Range(Tok.VocabSize, 4), chunk.PromptIds[71..]);
        Assert.Equal(75, t.TokenCount);
    }

    [Fact]
    public void Two_breaks_in_a_row_leave_an_empty_chunk_that_counts_75()
    {
        var t = PromptChunks.Tokenize(Tok, "a BREAK BREAK b");
        Assert.All(t.Chunks, c => Assert.Equal(77, c.Ids.Length));
        Assert.Equal([1, 0, 1], t.Chunks.Select(c => c.Length));
        Assert.Equal(Enumerable.Repeat(Tok.EosId, 76), t.Chunks[1].Ids[1..]);
        Assert.Equal(151, t.TokenCount);
        Assert.Equal(225, t.TokenLimit);

        var alone = PromptChunks.Tokenize(Tok, "BREAK");
        Assert.Single(alone.Chunks);
        Assert.Equal(75, alone.TokenCount);
    }

    [Fact]
    public void A_chunk_has_weights_only_when_a_token_in_it_is_weighted()
    {
        Assert.False(PromptChunks.Tokenize(Tok, "a dog").Chunks[0].HasWeights);
        var weighted = PromptChunks.Tokenize(Tok, "a [dog]").Chunks[0];
        Assert.True(weighted.HasWeights);
        Assert.Equal([1f, 1f, (float)(1 / 1.1), 1f], weighted.Weights[..4]);
        Assert.Equal(1f, weighted.Weights[76]);
    }
}

/// <summary>A1111's emphasis is per chunk; empty-chunk padding; refusals of the encoder.</summary>
public class PromptEncoderChunkTests(TinyClipText tiny) : IClassFixture<TinyClipText>
{
    private PromptEncoder Encoder => new(ClipTokenizer.Default, tiny.Model);

    private Tensor Plain(string prompt)
    {
        using var ids = tensor(ClipTokenizer.Default.EncodeForModel(prompt), [1, 77]);
        using var noGrad = no_grad();
        return tiny.Model.Encode(ids, 1);
    }

    [Fact]
    public void Emphasis_restores_each_chunks_own_mean_and_leaves_unweighted_chunks_as_they_are()
    {
        using var scope = NewDisposeScope();
        var dogs = string.Join(" ", Enumerable.Repeat("dog", 75));
        using var enc = Encoder.Encode(dogs + " BREAK (cat:1.5) dog");
        Assert.Equal([1, 154, 32], enc.Conditioning.shape);
        Fixtures.AssertClose(Plain(dogs), enc.Conditioning[.., ..77], 1e-5, "the unweighted chunk is untouched");
        var z = Plain("cat dog");
        var multipliers = ones(1, 77, 1);
        multipliers[0, 1] = tensor(1.5f);
        var weighted = z * multipliers;
        Fixtures.AssertClose(weighted * (z.mean() / weighted.mean()), enc.Conditioning[.., 77..], 1e-5, "second chunk, its own mean");
    }

    [Fact]
    public void A_shorter_prompt_is_padded_when_the_negative_is_longer()
    {
        using var scope = NewDisposeScope();
        using var prompt = Encoder.Encode("a dog");
        using var negative = Encoder.Encode(string.Join(" ", Enumerable.Repeat("blurry", 80)));
        var (p, n) = Encoder.PadToSameLength(prompt.Conditioning, negative.Conditioning);
        Assert.Equal([1, 154, 32], p.shape);
        Assert.True(p[.., 77..].equal(Plain("")).all().item<bool>());
        Assert.True(n.equal(negative.Conditioning).all().item<bool>());
    }

    [Fact]
    public void Encoder_refusals_name_what_is_wrong()
    {
        var none = Assert.Throws<ArgumentException>(() => Encoder.EncodeChunks([]));
        Assert.Equal("at least one chunk is needed (Parameter 'chunks')", none.Message);
        using var a = zeros(1, 77, 32);
        using var b = zeros(1, 100, 32);
        var odd = Assert.Throws<ArgumentException>(() => Encoder.PadToSameLength(a, b));
        Assert.Equal("conditionings of 77 and 100 positions are not whole 77-token chunks apart", odd.Message);
    }
}
