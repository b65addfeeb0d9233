namespace SdLora.Training;

/// <summary>
/// kohya's caption augmentation: with probability <see cref="DropoutRate"/> the caption becomes empty
/// (trains the unconditional branch); otherwise, if <see cref="Shuffle"/>, the comma-separated tags after
/// the first <see cref="KeepTokens"/> are shuffled (the trigger words stay in front).
/// </summary>
public sealed record CaptionProcessor(bool Shuffle = false, int KeepTokens = 0, double DropoutRate = 0)
{
    public static CaptionProcessor FromConfig(TrainingConfig c) => new(c.ShuffleCaption, c.KeepTokens, c.CaptionDropout);

    /// <summary>Caption for one draw, reproducible from (seed, epoch, sample index).</summary>
    public string Process(string caption, long seed, int epoch, long sampleIndex) =>
        Process(caption, SeededRandom.For(seed, 0xCA9, epoch, sampleIndex));

    public string Process(string caption, Random rng)
    {
        if (DropoutRate > 0 && rng.NextDouble() < DropoutRate) return "";
        if (!Shuffle) return caption;
        var tags = SplitTags(caption).ToList();
        if (tags.Count <= KeepTokens + 1) return string.Join(", ", tags);
        var flex = tags.Skip(KeepTokens).ToList();
        SeededRandom.Shuffle(flex, rng);
        return string.Join(", ", tags.Take(KeepTokens).Concat(flex));
    }

    /// <summary>Comma-separated, trimmed, non-empty tags.</summary>
    public static IEnumerable<string> SplitTags(string caption) =>
        caption.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
}
