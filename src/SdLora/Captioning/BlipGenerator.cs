using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Captioning;

/// <summary>How beam search normalises a finished hypothesis' summed log-probability.</summary>
public enum BeamLengthRule
{
    /// <summary>transformers &gt;= 4.36 (what current Hugging Face users get): divide by the number of generated tokens.</summary>
    GeneratedTokens,
    /// <summary>transformers &lt;= 4.35: divide by the whole sequence length, bos and prompt included.</summary>
    WholeSequence,
}

/// <summary>
/// Caption generation settings, with transformers' <c>generate()</c> meanings: <see cref="MaxLength"/> and
/// <see cref="MinLength"/> count every token including <c>[DEC]</c> and the prompt. <see cref="NumBeams"/> &gt; 1
/// selects beam search, <see cref="DoSample"/> nucleus sampling (top-k then top-p), otherwise greedy.
/// </summary>
public sealed record BlipGenerationOptions
{
    public int MaxLength { get; init; } = 20;
    public int MinLength { get; init; }
    public int NumBeams { get; init; } = 1;
    public double RepetitionPenalty { get; init; } = 1.0;
    public bool DoSample { get; init; }
    public int TopK { get; init; } = 50;
    public double TopP { get; init; } = 1.0;
    public BeamLengthRule LengthRule { get; init; } = BeamLengthRule.GeneratedTokens;

    public void Validate()
    {
        if (MaxLength < 1) throw new SdLoraException($"--max-length {MaxLength}: must be at least 1");
        if (MinLength < 0 || MinLength > MaxLength) throw new SdLoraException($"--min-length {MinLength}: must be between 0 and --max-length ({MaxLength})");
        if (NumBeams < 1) throw new SdLoraException($"--num-beams {NumBeams}: must be at least 1");
        if (DoSample && NumBeams > 1) throw new SdLoraException("--top-p (sampling) and --num-beams > 1 (beam search) exclude each other; pick one");
        if (RepetitionPenalty <= 0) throw new SdLoraException($"--repetition-penalty {RepetitionPenalty}: must be positive (1.0 = off)");
        if (TopP <= 0 || TopP > 1) throw new SdLoraException($"--top-p {TopP}: must be in (0, 1]");
        if (TopK < 0) throw new SdLoraException($"--top-k {TopK}: must be 0 (off) or positive");
    }
}

/// <summary>The random draws of nucleus sampling: for each step, Exp(1) noise; the token is <c>argmax(probs / noise)</c>.</summary>
public interface ISamplingNoise
{
    /// <summary>[rows, vocab] float32 Exp(1) draws for generation step <paramref name="step"/> (0-based).</summary>
    Tensor Exponential(int step, long rows, long vocab);
}

/// <summary>Seeded Exp(1) draws from a torch generator: same seed, same captions (on the same device).</summary>
public sealed class SeededSamplingNoise(long seed) : ISamplingNoise
{
    private readonly Generator _generator = new Generator((ulong)seed);

    public Tensor Exponential(int step, long rows, long vocab) =>
        torch.empty(rows, vocab, ScalarType.Float32).exponential_(1.0, _generator);
}

/// <summary>Generated token ids per image [B, L] (prompt included, <c>[SEP]</c>, then <c>[PAD]</c> fill).</summary>
public sealed record BlipGenerationResult(long[][] Sequences, double[]? SequenceScores, List<Tensor>? StepScores);

/// <summary>
/// transformers' <c>generate()</c> for BLIP captioning: greedy search, beam search and nucleus sampling, stopping on
/// <c>[SEP]</c>, with a key/value cache so each step runs the decoder on one new token.
/// </summary>
public static class BlipGenerator
{
    /// <param name="promptIds">Start ids: <c>[DEC]</c> then the prompt's tokens (no <c>[SEP]</c>), the same for every image.</param>
    /// <param name="recordScores">Keep each step's processed scores (for tests): raw logits for greedy/sampling, log-softmax for beams; after the repetition penalty, before the min-length mask.</param>
    public static BlipGenerationResult Generate(BlipForConditionalGeneration model, Tensor pixelValues, IReadOnlyList<long> promptIds,
        BlipGenerationOptions options, ISamplingNoise? noise = null, bool recordScores = false, CancellationToken cancellationToken = default)
    {
        options.Validate();
        if (promptIds.Count == 0) throw new ArgumentException("the prompt needs at least the bos token", nameof(promptIds));
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var image = model.EncodeImage(pixelValues);
        var steps = recordScores ? new List<Tensor>() : null;
        var result = options.NumBeams > 1
            ? BeamSearch(model, image, promptIds, options, steps, cancellationToken)
            : GreedyOrSample(model, image, promptIds, options, options.DoSample ? noise ?? new SeededSamplingNoise(0) : null, steps, cancellationToken);
        if (steps is not null) foreach (var s in steps) s.MoveToOuterDisposeScope();
        return result;
    }

    private static Tensor IdsTensor(IReadOnlyList<List<long>> rows, Device device)
    {
        var flat = rows.SelectMany(r => r).ToArray();
        return torch.tensor(flat, [rows.Count, rows[0].Count], device: device);
    }

    /// <summary>Every token already in a row gets its score divided by p when positive, multiplied when negative.</summary>
    private static Tensor ApplyRepetitionPenalty(Tensor scores, IReadOnlyList<List<long>> rows, double penalty)
    {
        if (penalty == 1.0) return scores;
        var ids = IdsTensor(rows, scores.device);
        var seen = scores.gather(1, ids);
        var penalised = torch.where(seen < 0, seen * penalty, seen / penalty);
        return scores.scatter(1, ids, penalised);
    }

    private static Tensor BanSep(Tensor scores, int sep)
    {
        var s = scores.clone();
        s[.., sep] = float.NegativeInfinity;
        return s;
    }

    private static Tensor TopK(Tensor scores, int k)
    {
        if (k <= 0 || k >= scores.shape[1]) return scores;
        var kth = scores.topk(k, 1).values[.., ^1..];
        return scores.masked_fill(scores < kth, float.NegativeInfinity);
    }

    private static Tensor TopP(Tensor scores, double p)
    {
        if (p >= 1.0) return scores;
        var (sorted, order) = scores.sort(1, descending: false);
        var cumulative = sorted.softmax(1).cumsum(1);
        var remove = cumulative <= 1.0 - p;
        remove[.., ^1] = false; // always keep the most likely token
        var removeInPlace = remove.scatter(1, order, remove);
        return scores.masked_fill(removeInPlace, float.NegativeInfinity);
    }

    private static BlipGenerationResult GreedyOrSample(BlipForConditionalGeneration model, Tensor image, IReadOnlyList<long> prompt,
        BlipGenerationOptions o, ISamplingNoise? noise, List<Tensor>? steps, CancellationToken ct)
    {
        var cfg = model.Config.Text;
        int batch = (int)image.shape[0];
        var rows = Enumerable.Range(0, batch).Select(_ => prompt.ToList()).ToList();
        var unfinished = Enumerable.Repeat(true, batch).ToArray();
        using var cache = new BlipDecoderCache(cfg.NumHiddenLayers);
        long[]? lastTokens = null;
        for (int step = 0; rows[0].Count < o.MaxLength; step++)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            // The whole prompt first, then one new token per step (the cache holds the rest).
            var input = lastTokens is null ? IdsTensor(rows, image.device) : torch.tensor(lastTokens, [batch, 1], device: image.device);
            var logits = model.text_decoder.Forward(input, image, null, cache)[.., -1, ..].to(ScalarType.Float32);
            var scores = ApplyRepetitionPenalty(logits, rows, o.RepetitionPenalty);
            if (steps is not null) steps.Add(scores.clone().DetachFromDisposeScope());
            if (rows[0].Count < o.MinLength) scores = BanSep(scores, cfg.SepTokenId);
            Tensor next;
            if (noise is not null)
            {
                scores = TopP(TopK(scores, o.TopK), o.TopP);
                var probs = scores.softmax(1);
                using var draws = noise.Exponential(step, batch, scores.shape[1]);
                next = (probs / draws.to(probs.device)).argmax(1);
            }
            else next = scores.argmax(1);
            var tokens = next.cpu().data<long>().ToArray();
            for (int b = 0; b < batch; b++)
            {
                long t = unfinished[b] ? tokens[b] : cfg.PadTokenId;
                rows[b].Add(t);
                tokens[b] = t;
                if (t == cfg.SepTokenId) unfinished[b] = false;
            }
            lastTokens = tokens;
            if (!unfinished.Any(u => u)) break;
        }
        return new BlipGenerationResult(rows.Select(r => r.ToArray()).ToArray(), null, steps);
    }

    private sealed class Hypotheses(int numBeams)
    {
        public readonly List<(double Score, long[] Tokens)> Beams = [];
        public double Worst = 1e9;

        public void Add(long[] tokens, double sumLogProbs, int lengthForNorm)
        {
            double score = sumLogProbs / lengthForNorm;
            if (Beams.Count < numBeams || score > Worst)
            {
                Beams.Add((score, tokens));
                if (Beams.Count > numBeams)
                {
                    // Drop the worst; ties go to the earlier one, as Python's sort of (score, index) pairs does.
                    var order = Beams.Select((b, i) => (b.Score, i)).OrderBy(x => x.Score).ThenBy(x => x.i).ToList();
                    Beams.RemoveAt(order[0].i);
                    Worst = order[1].Score;
                }
                else Worst = Math.Min(score, Worst);
            }
        }

        public bool IsDone(double bestSumLogProbs, int lengthForNorm) =>
            Beams.Count >= numBeams && Worst >= bestSumLogProbs / lengthForNorm;
    }

    private static BlipGenerationResult BeamSearch(BlipForConditionalGeneration model, Tensor image, IReadOnlyList<long> prompt,
        BlipGenerationOptions o, List<Tensor>? steps, CancellationToken ct)
    {
        var cfg = model.Config.Text;
        int nb = o.NumBeams, batch = (int)image.shape[0], rowsCount = batch * nb;
        int promptLen = prompt.Count;
        bool newRule = o.LengthRule == BeamLengthRule.GeneratedTokens;
        var beamImage = image.repeat_interleave(nb, 0);
        var rows = Enumerable.Range(0, rowsCount).Select(_ => prompt.ToList()).ToList();
        // Only beam 0 is live at the start, so the first step expands one beam.
        var beamScores = Enumerable.Range(0, rowsCount).Select(r => r % nb == 0 ? 0f : -1e9f).ToArray();
        var hyps = Enumerable.Range(0, batch).Select(_ => new Hypotheses(nb)).ToArray();
        var done = new bool[batch];
        using var cache = new BlipDecoderCache(cfg.NumHiddenLayers);
        long[]? lastTokens = null;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            int curLen = rows[0].Count;
            using var scope = torch.NewDisposeScope();
            var input = lastTokens is null ? IdsTensor(rows, image.device) : torch.tensor(lastTokens, [rowsCount, 1], device: image.device);
            var logits = model.text_decoder.Forward(input, beamImage, null, cache)[.., -1, ..].to(ScalarType.Float32);
            var scores = ApplyRepetitionPenalty(logits.log_softmax(1), rows, o.RepetitionPenalty);
            if (steps is not null) steps.Add(scores.clone().DetachFromDisposeScope());
            if (curLen < o.MinLength) scores = BanSep(scores, cfg.SepTokenId);
            long vocab = scores.shape[1];
            var total = (scores + torch.tensor(beamScores, device: scores.device).unsqueeze(1)).view(batch, nb * vocab);
            var (topValues, topIndices) = total.topk(2 * nb, 1, largest: true, sorted: true);
            var values = topValues.cpu().data<float>().ToArray();
            var indices = topIndices.cpu().data<long>().ToArray();

            var newScores = new float[rowsCount];
            var newTokens = new long[rowsCount];
            var newSources = new long[rowsCount];
            for (int b = 0; b < batch; b++)
            {
                if (done[b])
                {
                    // A finished entry's beams run on padding (source row 0, as the reference does); don't-care.
                    for (int j = 0; j < nb; j++) { newScores[b * nb + j] = 0; newTokens[b * nb + j] = cfg.PadTokenId; newSources[b * nb + j] = 0; }
                    continue;
                }
                int filled = 0;
                for (int rank = 0; rank < 2 * nb; rank++)
                {
                    float score = values[b * 2 * nb + rank];
                    long index = indices[b * 2 * nb + rank];
                    long token = index % vocab, source = b * nb + index / vocab;
                    if (token == cfg.SepTokenId)
                    {
                        if (rank >= nb) continue;
                        int length = newRule ? curLen + 1 - promptLen : curLen;
                        hyps[b].Add(rows[(int)source].ToArray(), score, length);
                    }
                    else
                    {
                        newScores[b * nb + filled] = score;
                        newTokens[b * nb + filled] = token;
                        newSources[b * nb + filled] = source;
                        filled++;
                    }
                    if (filled == nb) break;
                }
                double best = values[b * 2 * nb];
                done[b] = done[b] || hyps[b].IsDone(best, newRule ? curLen + 1 - promptLen : curLen + 1);
            }

            rows = Enumerable.Range(0, rowsCount).Select(r => new List<long>(rows[(int)newSources[r]]) { newTokens[r] }).ToList();
            cache.ReorderRows(torch.tensor(newSources, device: image.device));
            beamScores = newScores;
            lastTokens = newTokens;
            if (done.All(d => d) || rows[0].Count >= o.MaxLength) break;
        }

        // Entries still running at max_length contribute their live beams (without [SEP]).
        for (int b = 0; b < batch; b++)
        {
            if (done[b]) continue;
            for (int j = 0; j < nb; j++)
            {
                var tokens = rows[b * nb + j].ToArray();
                hyps[b].Add(tokens, beamScores[b * nb + j], newRule ? tokens.Length - promptLen : tokens.Length);
            }
        }
        var bestHyps = new (double Score, long[] Tokens)[batch];
        for (int b = 0; b < batch; b++)
        {
            // Highest score; among equals the last one added (Python's stable sort, then pop()).
            var beams = hyps[b].Beams;
            int pick = 0;
            for (int i = 1; i < beams.Count; i++) if (beams[i].Score >= beams[pick].Score) pick = i;
            bestHyps[b] = beams[pick];
        }
        int width = Math.Min(bestHyps.Max(h => h.Tokens.Length) + 1, o.MaxLength);
        var sequences = bestHyps.Select(h =>
        {
            var row = Enumerable.Repeat((long)cfg.PadTokenId, width).ToArray();
            Array.Copy(h.Tokens, row, h.Tokens.Length);
            if (h.Tokens.Length < width) row[h.Tokens.Length] = cfg.SepTokenId;
            return row;
        }).ToArray();
        return new BlipGenerationResult(sequences, bestHyps.Select(h => h.Score).ToArray(), steps);
    }
}
