namespace SdLora.Training;

/// <summary>Training resolution (width, height). Parsed from <c>512</c> or <c>512,768</c> as kohya's <c>--resolution</c>.</summary>
public readonly record struct Resolution(int Width, int Height)
{
    public static Resolution Square(int side) => new(side, side);

    public long Area => (long)Width * Height;

    public static Resolution Parse(string text)
    {
        var parts = text.Replace('x', ',').Replace('X', ',').Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length is 1 or 2 && parts.All(p => int.TryParse(p, out _)))
        {
            int w = int.Parse(parts[0]);
            return new Resolution(w, parts.Length == 2 ? int.Parse(parts[1]) : w);
        }
        throw new SdLoraException($"resolution '{text}' is not a size: use 512 or 512,768 (width,height)") { Setting = "resolution" };
    }

    public override string ToString() => $"{Width},{Height}";

    /// <summary>kohya writes <c>ss_resolution</c> as a Python tuple.</summary>
    public string ToKohyaString() => $"({Width}, {Height})";
}
