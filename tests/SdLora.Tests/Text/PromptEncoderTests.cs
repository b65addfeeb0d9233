using SdLora.Models;
using SdLora.Text;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Text;

public class PromptChunkTests
{
    private static readonly ClipTokenizer Tok = ClipTokenizer.Default;

    [Fact]
    public void Empty_prompt_is_one_chunk_of_bos_and_padding()
    {
        var t = PromptChunks.Tokenize(Tok, "");
        var chunk = Assert.Single(t.Chunks);
        Assert.Equal(77, chunk.Ids.Length);
        Assert.Equal(ClipTokenizer.Bos, chunk.Ids[0]);
        Assert.All(chunk.Ids[1..], id => Assert.Equal(ClipTokenizer.Eos, id));
        Assert.Equal(0, t.TokenCount);
        Assert.Equal(75, t.TokenLimit);
    }

    [Fact]
    public void Short_prompt_chunk_equals_model_input_ids()
    {
        var t = PromptChunks.Tokenize(Tok, "a photo of sks dog");
        Assert.Equal(Tok.EncodeForModel("a photo of sks dog"), t.Ids);
        Assert.Equal(5, t.TokenCount);
        Assert.Equal([320, 1125, 539, 48136, 1929], t.Chunks[0].PromptIds);
    }

    [Fact]
    public void Prompt_over_75_tokens_spills_into_a_second_chunk()
    {
        var t = PromptChunks.Tokenize(Tok, string.Join(" ", Enumerable.Repeat("dog", 80)));
        Assert.Equal(2, t.Chunks.Count);
        Assert.Equal(80, t.TokenCount);
        Assert.Equal(150, t.TokenLimit);
        Assert.Equal(75, t.Chunks[0].Length);
        Assert.Equal(5, t.Chunks[1].Length);
        Assert.Equal(ClipTokenizer.Eos, t.Chunks[0].Ids[76]);
        Assert.Equal(ClipTokenizer.Bos, t.Chunks[1].Ids[0]);
    }

    [Fact]
    public void Break_starts_a_new_chunk_and_counts_the_full_chunk()
    {
        var t = PromptChunks.Tokenize(Tok, "a cat BREAK a dog");
        Assert.Equal(2, t.Chunks.Count);
        Assert.Equal([320, 2368], t.Chunks[0].PromptIds);
        Assert.Equal([320, 1929], t.Chunks[1].PromptIds);
        Assert.Equal(77, t.TokenCount); // A1111: 75 for the closed chunk + 2
        Assert.Equal(150, t.TokenLimit);
    }

    [Fact]
    public void Full_chunk_moves_the_words_after_a_recent_comma_to_the_next_chunk()
    {
        var prompt = string.Join(" ", Enumerable.Repeat("dog", 70)) + ", " + string.Join(" ", Enumerable.Repeat("cat", 10));
        var t = PromptChunks.Tokenize(Tok, prompt);
        Assert.Equal(71, t.Chunks[0].Length); // 70 dogs and the comma
        Assert.Equal(Tok.CommaId, t.Chunks[0].Ids[71]);
        Assert.Equal(Enumerable.Repeat(2368, 10), t.Chunks[1].PromptIds);
        Assert.Equal(85, t.TokenCount);

        var noBacktrack = PromptChunks.Tokenize(Tok, prompt, commaBacktrack: 0);
        Assert.Equal(75, noBacktrack.Chunks[0].Length);
        Assert.Equal(6, noBacktrack.Chunks[1].Length);
    }

    [Fact]
    public void Weights_follow_tokens_and_lora_tags_are_dropped_from_the_text()
    {
        var t = PromptChunks.Tokenize(Tok, "a (sks dog:1.5) <lora:sks:0.7>");
        Assert.Equal([320, 48136, 1929], t.Chunks[0].PromptIds);
        Assert.Equal([1f, 1f, 1.5f, 1.5f, 1f], t.Chunks[0].Weights[..5]);
        Assert.Equal(0.7, t.Loras.Single().Weight);
        Assert.Equal(3, t.TokenCount);
    }
}

public class PromptEncoderTests(TinyClipText tiny) : IClassFixture<TinyClipText>
{
    private PromptEncoder Encoder => new(ClipTokenizer.Default, tiny.Model);

    private Tensor Plain(string prompt, int clipSkip = 1)
    {
        using var ids = tensor(ClipTokenizer.Default.EncodeForModel(prompt), [1, 77]);
        using var noGrad = no_grad();
        return tiny.Model.Encode(ids, clipSkip);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Unweighted_short_prompt_equals_plain_encode(int clipSkip)
    {
        using var scope = NewDisposeScope();
        using var enc = Encoder.Encode("a photo of sks dog, ultra-realistic", clipSkip);
        Assert.Equal([1, 77, 32], enc.Conditioning.shape);
        Assert.True(Plain("a photo of sks dog, ultra-realistic", clipSkip).equal(enc.Conditioning).all().item<bool>(), "identical to Encode(EncodeForModel(text))");
    }

    [Fact]
    public void Weighted_tokens_are_scaled_and_the_chunk_mean_is_restored()
    {
        using var scope = NewDisposeScope();
        using var enc = Encoder.Encode("a (sks dog:1.5) in [a bucket]");
        var z = Plain("a sks dog in a bucket");
        var multipliers = ones(1, 77, 1);
        multipliers[0, TensorIndex.Slice(2, 4)] = tensor(1.5f);
        multipliers[0, TensorIndex.Slice(5, 7)] = tensor((float)(1 / 1.1));
        var weighted = z * multipliers;
        var expected = weighted * (z.mean() / weighted.mean());
        Fixtures.AssertClose(expected, enc.Conditioning, 1e-5, "A1111 emphasis");
        Assert.Equal(z.mean().item<float>(), enc.Conditioning.mean().item<float>(), 1e-5);
    }

    [Fact]
    public void Long_prompt_encodes_two_chunks_into_154_positions()
    {
        using var scope = NewDisposeScope();
        var prompt = string.Join(" ", Enumerable.Repeat("dog", 80));
        using var enc = Encoder.Encode(prompt);
        Assert.Equal([1, 154, 32], enc.Conditioning.shape);
        Assert.Equal(80, enc.TokenCount);
        Assert.Equal(2, enc.ChunkCount);
        var firstChunk = Plain(string.Join(" ", Enumerable.Repeat("dog", 75)));
        Fixtures.AssertClose(firstChunk, enc.Conditioning[.., ..77], 1e-5, "first chunk");
    }

    [Fact]
    public void Padding_appends_the_empty_prompt_encoding_to_the_shorter_conditioning()
    {
        using var scope = NewDisposeScope();
        using var longPrompt = Encoder.Encode(string.Join(" ", Enumerable.Repeat("dog", 80)));
        using var negative = Encoder.Encode("blurry");
        var (p, n) = Encoder.PadToSameLength(longPrompt.Conditioning, negative.Conditioning);
        Assert.Equal([1, 154, 32], p.shape);
        Assert.Equal([1, 154, 32], n.shape);
        Assert.True(n[.., ..77].equal(negative.Conditioning).all().item<bool>());
        Assert.True(n[.., 77..].equal(Plain("")).all().item<bool>());
        Assert.True(p.equal(longPrompt.Conditioning).all().item<bool>());
    }

    [Fact]
    public void Runs_on_a_bf16_text_encoder()
    {
        var model = ClipTextModelTests.LoadTiny(Fixtures.CopiedTinyModel);
        model.to(ScalarType.BFloat16);
        using var scope = NewDisposeScope();
        using var enc = new PromptEncoder(ClipTokenizer.Default, model).Encode("a (photo:1.2) of sks dog");
        Assert.Equal(ScalarType.BFloat16, enc.Conditioning.dtype);
        using var fp32 = Encoder.Encode("a (photo:1.2) of sks dog");
        Fixtures.AssertClose(fp32.Conditioning, enc.Conditioning, Tolerance.Bf16VsFp32, "bf16 vs fp32 conditioning");
    }
}

/// <summary>The prompt encoder on the golden set's text encoder against the pipeline's prompt embeddings (txt2img fixture).</summary>
[Trait("Category", "Golden")]
public class PromptEncoderGoldenTests
{
    [SkippableFact]
    public void Conditioning_matches_diffusers_prompt_embeds()
    {
        using var json = Fixtures.Json("txt2img");
        using var f = Fixtures.Open("txt2img");
        using var model = ClipTextModelTests.LoadTiny(Fixtures.Golden("tiny-sd15"));
        var encoder = new PromptEncoder(ClipTokenizer.FromDiffusersFolder(Fixtures.Golden("tiny-sd15/tokenizer")), model);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        foreach (var (key, tensor) in new[] { ("prompt", "prompt_embeds"), ("negative_prompt", "negative_prompt_embeds") })
        {
            using var encoded = encoder.Encode(json.RootElement.GetProperty(key).GetString()!);
            Fixtures.AssertClose(f.Load(tensor), encoded.Conditioning, Fixtures.GoldenTolerance("txt2img", tensor, 1e-4), tensor);
        }
    }
}
