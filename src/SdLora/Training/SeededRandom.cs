namespace SdLora.Training;

/// <summary>
/// Random streams derived from the run seed and a few integers (epoch, sample index, ...), so any
/// piece of the data pipeline can be replayed exactly on resume without carrying RNG state around.
/// </summary>
public static class SeededRandom
{
    /// <summary>A <see cref="Random"/> whose sequence depends only on (seed, parts). .NET's seeded Random is stable across versions.</summary>
    public static Random For(long seed, params long[] parts) => new(unchecked((int)Mix(seed, parts)));

    /// <summary>SplitMix64 over the seed and parts.</summary>
    public static ulong Mix(long seed, params long[] parts)
    {
        ulong h = unchecked((ulong)seed) ^ 0x9E3779B97F4A7C15UL;
        h = SplitMix(h);
        foreach (var p in parts) h = SplitMix(h ^ unchecked((ulong)p));
        return h;
    }

    private static ulong SplitMix(ulong x)
    {
        unchecked
        {
            x += 0x9E3779B97F4A7C15UL;
            x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
            x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
            return x ^ (x >> 31);
        }
    }

    /// <summary>Fisher-Yates shuffle in place.</summary>
    public static void Shuffle<T>(IList<T> list, Random rng)
    {
        for (int i = list.Count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }
    }
}
