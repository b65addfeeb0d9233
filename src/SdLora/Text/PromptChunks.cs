namespace SdLora.Text;

/// <summary>
/// One 77-token text-encoder input: BOS, 75 prompt tokens (EOS-padded), EOS; with each token's attention weight.
/// <see cref="Length"/> is the number of prompt tokens in it (they sit at positions 1..Length).
/// </summary>
public sealed record PromptChunk(int[] Ids, float[] Weights, int Length)
{
    public int[] PromptIds => Ids[1..(1 + Length)];

    public bool HasWeights => Weights.Any(w => w != 1f);
}

/// <summary>
/// A prompt tokenized the way AUTOMATIC1111 does it: LoRA tags removed, attention parsed, each segment tokenized on
/// its own, then cut into chunks of 75 tokens. <see cref="TokenCount"/> is the number A1111 shows as "n/75".
/// </summary>
public sealed record TokenizedPrompt(string Text, IReadOnlyList<PromptChunk> Chunks, int TokenCount, IReadOnlyList<LoraTag> Loras)
{
    /// <summary>The denominator A1111 shows next to the token count: 75 times the number of chunks the count needs.</summary>
    public int TokenLimit => PromptChunks.ChunkLength * (int)Math.Ceiling(Math.Max(TokenCount, 1) / (double)PromptChunks.ChunkLength);

    /// <summary>All ids, chunk after chunk ([77 * chunks]).</summary>
    public long[] Ids => Chunks.SelectMany(c => c.Ids).Select(i => (long)i).ToArray();
}

public static class PromptChunks
{
    /// <summary>Prompt tokens per chunk (77 positions minus BOS and EOS).</summary>
    public const int ChunkLength = 75;

    /// <summary>
    /// Tokenizes a prompt into chunks as A1111's <c>tokenize_line</c>: a <c>BREAK</c> closes the current chunk; when a
    /// chunk is full and a comma appeared within its last <paramref name="commaBacktrack"/> tokens, the tokens after
    /// that comma move to the next chunk (A1111's "comma padding backtrack", default 20; 0 turns it off).
    /// With <paramref name="embeddings"/>, an embedding's name in the prompt becomes its vectors (one token each; an
    /// embedding that does not fit in what is left of a chunk starts the next one, as in A1111).
    /// </summary>
    public static TokenizedPrompt Tokenize(ClipTokenizer tokenizer, string prompt, int commaBacktrack = 20, PromptEmbeddings? embeddings = null)
    {
        var parsed = PromptParser.Parse(prompt);
        var chunks = new List<PromptChunk>();
        var ids = new List<int>();
        var weights = new List<float>();
        int tokenCount = 0;
        int lastComma = -1;

        void CloseChunk(bool isLast)
        {
            tokenCount += isLast ? ids.Count : ChunkLength;
            int length = ids.Count;
            var chunkIds = new int[ChunkLength + 2];
            var chunkWeights = new float[ChunkLength + 2];
            Array.Fill(chunkIds, tokenizer.EosId);
            Array.Fill(chunkWeights, 1f);
            chunkIds[0] = tokenizer.BosId;
            ids.CopyTo(chunkIds, 1);
            weights.CopyTo(chunkWeights, 1);
            chunks.Add(new PromptChunk(chunkIds, chunkWeights, length));
            ids.Clear();
            weights.Clear();
            lastComma = -1;
        }

        foreach (var segment in parsed.Segments)
        {
            if (segment.IsBreak) { CloseChunk(false); continue; }
            float weight = (float)segment.Weight;
            var segmentIds = tokenizer.Encode(segment.Text);
            for (int position = 0; position < segmentIds.Length; position++)
            {
                if (embeddings is not null && embeddings.TryMatch(segmentIds, position, out int nameLength, out var vectorIds))
                {
                    if (ids.Count + vectorIds.Length > ChunkLength) CloseChunk(false);
                    ids.AddRange(vectorIds);
                    weights.AddRange(Enumerable.Repeat(weight, vectorIds.Length));
                    position += nameLength - 1;
                    continue;
                }
                int token = segmentIds[position];
                if (token == tokenizer.CommaId)
                    lastComma = ids.Count;
                else if (commaBacktrack != 0 && ids.Count == ChunkLength && lastComma != -1 && ids.Count - lastComma <= commaBacktrack)
                {
                    int cut = lastComma + 1;
                    var movedIds = ids.GetRange(cut, ids.Count - cut);
                    var movedWeights = weights.GetRange(cut, weights.Count - cut);
                    ids.RemoveRange(cut, ids.Count - cut);
                    weights.RemoveRange(cut, weights.Count - cut);
                    CloseChunk(false);
                    ids.AddRange(movedIds);
                    weights.AddRange(movedWeights);
                }
                if (ids.Count == ChunkLength) CloseChunk(false);
                ids.Add(token);
                weights.Add(weight);
            }
        }
        if (ids.Count > 0 || chunks.Count == 0) CloseChunk(true);
        return new TokenizedPrompt(parsed.Text, chunks, tokenCount, parsed.Loras);
    }
}
