using SdLora.Text;
using Xunit;

namespace SdLora.Tests.Text;

public class PromptParserTests
{
    private static (string, double)[] Parse(string text) =>
        PromptParser.ParseAttention(text).Select(s => (s.IsBreak ? "<BREAK>" : s.Text, s.Weight)).ToArray();

    [Fact]
    public void Plain_text_has_weight_one() =>
        Assert.Equal([("normal text", 1.0)], Parse("normal text"));

    [Fact]
    public void Round_brackets_multiply_by_1_1() =>
        Assert.Equal([("an ", 1.0), ("important", 1.1), (" word", 1.0)], Parse("an (important) word"));

    [Fact]
    public void Nested_weights_and_square_brackets_match_a1111_doctest()
    {
        // A1111's parse_prompt_attention doctest, with its exact floating-point products.
        Assert.Equal(
            [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
             (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)],
            Parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")); // the outer '(' is never closed
    }

    [Fact]
    public void Double_round_brackets_give_1_21() =>
        Assert.Equal([("detailed", 1.1 * 1.1)], Parse("((detailed))"));

    [Fact]
    public void Square_brackets_divide_by_1_1() =>
        Assert.Equal([("a ", 1.0), ("lowres", 1 / 1.1)], Parse("a [lowres]"));

    [Fact]
    public void Explicit_weight_replaces_the_bracket_multiplier() =>
        Assert.Equal([("masterpiece", 1.3), (", cat", 1.0)], Parse("(masterpiece:1.3), cat"));

    [Fact]
    public void Escaped_brackets_are_literal() =>
        Assert.Equal([("(literal]", 1.0)], Parse(@"\(literal\]"));

    [Fact]
    public void Escaped_backslash_is_literal() =>
        Assert.Equal([(@"a\b", 1.0)], Parse(@"a\\b"));

    [Fact]
    public void Adjacent_groups_with_equal_weight_merge() =>
        Assert.Equal([("unnecessaryparens", 1.1)], Parse("(unnecessary)(parens)"));

    [Fact]
    public void Unbalanced_brackets_are_read_as_a1111_does()
    {
        Assert.Equal([("unbalanced", 1.1)], Parse("(unbalanced"));
        Assert.Equal([("a) b] c", 1.0)], Parse("a) b] c"));
        Assert.Equal([("a:1.2) b", 1.0)], Parse("a:1.2) b"));   // weight closer without an opener is text
        Assert.Equal([("a:1.5", 1 / 1.1)], Parse("[a:1.5]"));   // weights only work in round brackets
        Assert.Equal([("time: 10:30", 1.0)], Parse("time: 10:30"));
    }

    [Fact]
    public void Empty_prompt_is_one_empty_segment() =>
        Assert.Equal([("", 1.0)], Parse(""));

    [Fact]
    public void Break_keyword_splits_segments()
    {
        Assert.Equal([("a", 1.0), ("<BREAK>", -1.0), ("b", 1.0)], Parse("a BREAK b"));
        Assert.Equal([("aBREAK break b", 1.0)], Parse("aBREAK break b")); // only the upper-case separate word
        Assert.Equal([("a", 1.1), ("<BREAK>", -1.0), ("b", 1.1)], Parse("(a BREAK b)"));
    }

    [Fact]
    public void Malformed_weight_is_a_clear_error()
    {
        var ex = Assert.Throws<SdLoraException>(() => PromptParser.ParseAttention("(cat:1.2.3)"));
        Assert.Contains(":1.2.3)", ex.Message);
    }

    [Fact]
    public void Lora_tags_are_removed_and_returned()
    {
        var (text, loras) = PromptParser.ExtractLoraTags("a photo <lora:sks_dog:0.8> of <lora:style> x <hypernet:h:1> <lora:two:0.5:0.25>");
        Assert.Equal("a photo  of  x  ", text);
        Assert.Equal(3, loras.Count);
        Assert.Equal(new LoraTag("sks_dog", 0.8), loras[0]);
        Assert.Equal(1.0, loras[1].Weight);
        Assert.Equal(1.0, loras[1].UNetWeight);
        Assert.Equal("two", loras[2].Name);
        Assert.Equal(0.5, loras[2].TextEncoderWeight);
        Assert.Equal(0.25, loras[2].UNetWeight);
    }

    [Fact]
    public void Lora_tag_with_named_weights()
    {
        var (_, loras) = PromptParser.ExtractLoraTags("<lora:x:te=0.3:unet=0.6>");
        Assert.Equal(0.3, loras[0].TextEncoderWeight);
        Assert.Equal(0.6, loras[0].UNetWeight);
    }

    [Fact]
    public void Lora_tag_with_bad_weight_is_a_clear_error()
    {
        var ex = Assert.Throws<SdLoraException>(() => PromptParser.ExtractLoraTags("<lora:dog:strong>"));
        Assert.Contains("<lora:dog:strong>", ex.Message);
    }

    [Fact]
    public void Parse_combines_lora_extraction_and_attention()
    {
        var parsed = PromptParser.Parse("(sks dog:1.2) <lora:sks:0.9>");
        Assert.Equal("sks", parsed.Loras.Single().Name);
        Assert.Equal(1.2, parsed.Segments[0].Weight);
        Assert.Equal("sks dog", parsed.Segments[0].Text);
    }
}
