using System.Text.RegularExpressions;

namespace SdLora.Training;

/// <summary>
/// kohya's caption augmentation: with probability <see cref="DropoutRate"/> the caption becomes empty
/// (trains the unconditional branch); otherwise, if <see cref="Shuffle"/>, the comma-separated tags after
/// the first <see cref="KeepTokens"/> are shuffled (the trigger words stay in front). Then, for textual inversion,
/// an instance image's caption is replaced by one of <see cref="Templates"/> (kohya's object/style prompts) or has
/// <see cref="WordReplacement"/> applied (the token string spelled out as all its vector tokens); class images keep theirs.
/// </summary>
public sealed record CaptionProcessor(bool Shuffle = false, int KeepTokens = 0, double DropoutRate = 0)
{
    /// <summary>Prompt templates with <c>{}</c> where the word goes, already filled in; null: captions as they are.</summary>
    public IReadOnlyList<string>? Templates { get; init; }
    /// <summary>A whole word replaced in instance captions (e.g. <c>sks</c> -> <c>sks sks1 sks2</c>), or null.</summary>
    public (string Word, string Replacement)? WordReplacement { get; init; }

    /// <summary>The run's caption settings; a token string of several vectors is spelled out in every instance caption.</summary>
    public static CaptionProcessor FromConfig(TrainingConfig c) => new(c.ShuffleCaption, c.KeepTokens, c.CaptionDropout)
    {
        WordReplacement = c.TokenString is { } word && c.NumVectorsPerToken > 1 ? (word, string.Join(" ", c.TokenStrings)) : null,
    };

    /// <summary>Caption for one draw, reproducible from (seed, epoch, sample index).</summary>
    public string Process(string caption, long seed, int epoch, long sampleIndex) =>
        Process(caption, SeededRandom.For(seed, 0xCA9, epoch, sampleIndex));

    public string Process(string caption, Random rng, bool isRegularization = false)
    {
        var processed = Augment(caption, rng);
        if (isRegularization) return processed;
        if (Templates is { Count: > 0 } t) return t[rng.Next(t.Count)];
        if (WordReplacement is { } r) return ReplaceWord(processed, r.Word, r.Replacement);
        return processed;
    }

    private string Augment(string caption, Random rng)
    {
        if (DropoutRate > 0 && rng.NextDouble() < DropoutRate) return "";
        if (!Shuffle) return caption;
        var tags = SplitTags(caption).ToList();
        if (tags.Count <= KeepTokens + 1) return string.Join(", ", tags);
        var flex = tags.Skip(KeepTokens).ToList();
        SeededRandom.Shuffle(flex, rng);
        return string.Join(", ", tags.Take(KeepTokens).Concat(flex));
    }

    /// <summary>Replaces <paramref name="word"/> where it stands alone (no letter or digit around it; any case).</summary>
    public static string ReplaceWord(string text, string word, string replacement) =>
        WordPattern(word).Replace(text, replacement.Replace("$", "$$"));

    /// <summary>True when <paramref name="word"/> stands alone somewhere in <paramref name="text"/> (as <see cref="ReplaceWord"/> finds it).</summary>
    public static bool ContainsWord(string text, string word) => WordPattern(word).IsMatch(text);

    private static Regex WordPattern(string word) =>
        new($@"(?<![\p{{L}}\p{{N}}]){Regex.Escape(word)}(?![\p{{L}}\p{{N}}])", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);

    /// <summary>Comma-separated, trimmed, non-empty tags.</summary>
    public static IEnumerable<string> SplitTags(string caption) =>
        caption.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
}
