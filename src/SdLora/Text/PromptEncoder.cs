using SdLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Text;

/// <summary>A prompt's conditioning <c>[1, 77 * chunks, hidden]</c> with what the prompt carried besides text.</summary>
public sealed record PromptEncoding(Tensor Conditioning, TokenizedPrompt Tokens) : IDisposable
{
    public IReadOnlyList<LoraTag> Loras => Tokens.Loras;
    /// <summary>Prompt tokens as A1111 counts them ("n/75").</summary>
    public int TokenCount => Tokens.TokenCount;
    public int ChunkCount => Tokens.Chunks.Count;
    public void Dispose() => Conditioning.Dispose();
}

/// <summary>
/// Turns A1111-style prompts into SD1.x conditioning as A1111 does: <see cref="PromptChunks"/> cuts the prompt into
/// 77-token chunks, each chunk goes through the text encoder, each output vector is multiplied by its token's
/// attention weight and the chunk is rescaled so its mean stays what it was unweighted; chunks are concatenated
/// along the sequence axis. A prompt of at most 75 tokens without weights gives exactly
/// <c>textModel.Encode(tokenizer.EncodeForModel(prompt))</c>.
/// </summary>
/// <remarks>
/// LoRA tags are only reported: apply them to the text encoder before encoding (get them first with
/// <see cref="PromptParser.ExtractLoraTags"/>). Encoding runs without gradients.
/// </remarks>
public sealed class PromptEncoder(ClipTokenizer tokenizer, ClipTextModel textModel)
{
    public ClipTokenizer Tokenizer => tokenizer;
    public ClipTextModel TextModel => textModel;
    /// <summary>A1111's "comma padding backtrack" (tokens); 0 disables it.</summary>
    public int CommaBacktrack { get; init; } = 20;

    /// <summary>Textual-inversion embeddings prompts may call up by name (A1111 style), or null for none.</summary>
    public PromptEmbeddings? Embeddings { get; init; }

    public PromptEncoding Encode(string prompt, int clipSkip = 1)
    {
        var tokens = PromptChunks.Tokenize(tokenizer, prompt, CommaBacktrack, Embeddings);
        return new PromptEncoding(EncodeChunks(tokens.Chunks, clipSkip), tokens);
    }

    /// <summary>Encodes already tokenized chunks to <c>[1, 77 * chunks, hidden]</c>, on the text model's device and dtype.</summary>
    public Tensor EncodeChunks(IReadOnlyList<PromptChunk> chunks, int clipSkip = 1)
    {
        if (chunks.Count == 0) throw new ArgumentException("at least one chunk is needed", nameof(chunks));
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var weight = textModel.text_model.embeddings.token_embedding.weight;
        int positions = chunks[0].Ids.Length;
        var ids = tensor(chunks.SelectMany(c => c.Ids).Select(i => (long)i).ToArray(), [chunks.Count, positions], device: weight!.device);
        var embeddingRows = textModel.text_model.embeddings;
        var previousRows = embeddingRows.AddedTokens;
        Tensor z;
        try
        {
            // The vectors of the embeddings used so far stand after the vocabulary for this call only.
            if (Embeddings?.Rows() is { } rows) embeddingRows.AddedTokens = rows;
            z = textModel.Encode(ids, clipSkip); // [chunks, 77, hidden]
        }
        finally { embeddingRows.AddedTokens = previousRows; }
        if (chunks.Any(c => c.HasWeights))
        {
            // A1111's "Original" emphasis, per chunk, computed in fp32 like A1111's float32 multipliers.
            var z32 = z.to(ScalarType.Float32);
            var multipliers = tensor(chunks.SelectMany(c => c.Weights).ToArray(), [chunks.Count, positions, 1], device: z.device);
            var originalMean = z32.mean([1, 2], keepdim: true);
            var weighted = z32 * multipliers;
            var newMean = weighted.mean([1, 2], keepdim: true);
            z = (weighted * (originalMean / newMean)).to(z.dtype);
        }
        return z.reshape(1, chunks.Count * positions, z.shape[2]).MoveToOuterDisposeScope();
    }

    /// <summary>The encoding of the empty prompt: one chunk, <c>[1, 77, hidden]</c>.</summary>
    public Tensor EncodeEmpty(int clipSkip = 1) => EncodeChunks(PromptChunks.Tokenize(tokenizer, "").Chunks, clipSkip);

    /// <summary>
    /// Brings a prompt's and a negative prompt's conditioning to the same number of chunks (needed to batch them for
    /// classifier-free guidance) by appending the empty prompt's encoding to the shorter one, as A1111 pads.
    /// Returns new tensors; the inputs are left as they are.
    /// </summary>
    public (Tensor Prompt, Tensor Negative) PadToSameLength(Tensor prompt, Tensor negative, int clipSkip = 1)
    {
        long length = Math.Max(prompt.shape[1], negative.shape[1]);
        using var scope = NewDisposeScope();
        Tensor? empty = null;
        Tensor Pad(Tensor c)
        {
            if (c.shape[1] == length) return c.alias();
            empty ??= EncodeEmpty(clipSkip).to(c.dtype);
            long chunk = empty.shape[1];
            if ((length - c.shape[1]) % chunk != 0)
                throw new ArgumentException($"conditionings of {c.shape[1]} and {length} positions are not whole {chunk}-token chunks apart");
            return cat([c, empty.repeat(c.shape[0], (length - c.shape[1]) / chunk, 1)], 1);
        }
        return (Pad(prompt).MoveToOuterDisposeScope(), Pad(negative).MoveToOuterDisposeScope());
    }
}
