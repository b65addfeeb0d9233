using System.Text.RegularExpressions;
using SdLora.Imaging;

namespace SdLora.Toy;

/// <summary>
/// What a prompt of the toy world asks for; null where it says nothing (a prompt "a red shape" fixes only the colour).
/// <see cref="Parse"/> reads it back from words; <see cref="Render"/> draws one picture of it, filling the rest at random.
/// </summary>
public sealed record ToyPrompt(string? Shape, ToyColour? Colour, ToyColour? Background, string? Size, string? Position)
{
    private static readonly Regex BackgroundPhrase = new(@"on an? (\w+) background", RegexOptions.Compiled);

    /// <summary>
    /// Reads the shape, colours, size and place named in <paramref name="prompt"/>. A word of <paramref name="tokens"/>
    /// (e.g. <c>sks</c>) stands for its concept's shape and colour.
    /// </summary>
    public static ToyPrompt Parse(string prompt, IReadOnlyDictionary<string, ToyConcept>? tokens = null)
    {
        var text = prompt.ToLowerInvariant();
        ToyColour? background = null;
        var bgMatch = BackgroundPhrase.Match(text);
        if (bgMatch.Success && ToyWorld.Palette.FirstOrDefault(c => c.Name == bgMatch.Groups[1].Value) is { } bg)
        {
            background = bg;
            text = text.Remove(bgMatch.Index, bgMatch.Length);
        }
        string? position = ToyWorld.Positions.Select(p => p.Phrase).FirstOrDefault(text.Contains);
        if (position is not null) text = text.Replace(position, " ");

        var words = Regex.Split(text, @"[^a-z]+").Where(w => w.Length > 0).ToList();
        string? shape = words.FirstOrDefault(w => ToyWorld.Shapes.Contains(w) || ToyWorld.HeldOutShapes.Contains(w));
        var colour = words.Select(w => ToyWorld.Palette.FirstOrDefault(c => c.Name == w)).FirstOrDefault(c => c is not null);
        string? size = words.FirstOrDefault(w => ToyWorld.Sizes.Contains(w));
        if (tokens is not null && words.Select(w => tokens.GetValueOrDefault(w)).FirstOrDefault(c => c is not null) is { } concept)
        {
            shape ??= concept.Shape;
            colour ??= concept.Colour;
        }
        return new ToyPrompt(shape, colour, background, size, position);
    }

    /// <summary>One scene that fits this prompt, the unnamed parts drawn from <paramref name="rng"/>.</summary>
    public ToyScene Scene(Random rng)
    {
        var shape = Shape ?? ToyWorld.Shapes[rng.Next(ToyWorld.Shapes.Count)];
        var bgChoices = Colour is null ? ToyWorld.Backgrounds : ToyWorld.Backgrounds.Where(b => b.Name != Colour.Name).ToList();
        var bg = Background ?? bgChoices[rng.Next(bgChoices.Count)];
        var fgChoices = ToyWorld.Colours.Where(c => c.Name != bg.Name).ToList();
        var fg = Colour ?? fgChoices[rng.Next(fgChoices.Count)];
        var size = Size ?? ToyWorld.Sizes[rng.Next(ToyWorld.Sizes.Count)];
        var position = Position ?? ToyWorld.Positions[rng.Next(ToyWorld.Positions.Count)].Phrase;
        return ToyWorld.Place(rng, shape, fg, bg, size, position);
    }

    /// <summary>The renderer's own picture of this prompt for <paramref name="seed"/>.</summary>
    public RgbImage Render(int seed, int size = ToyWorld.ImageSize) => ToyWorld.Render(Scene(new Random(seed)), size);

    public override string ToString() =>
        string.Join(", ", new[] { Size, Colour?.Name, Shape, Position, Background is null ? null : Background.Name + " background" }.Where(s => s is not null));
}
