using SdLora.Imaging;

namespace SdLora.Toy;

/// <summary>A named colour of the toy world.</summary>
public sealed record ToyColour(string Name, byte R, byte G, byte B)
{
    public override string ToString() => Name;
}

/// <summary>
/// One scene of the toy world: a single flat-coloured shape on a plain background. <see cref="Radius"/>, <see cref="X"/>
/// and <see cref="Y"/> are fractions of the image side (centre and circumscribed radius of the shape).
/// </summary>
public sealed record ToyScene(string Shape, ToyColour Colour, ToyColour Background, string Size, string Position, double Radius, double X, double Y);

/// <summary>
/// The small procedural world the bundled toy model is trained on and scored against: simple scenes of one shape
/// (circle, square, triangle, star, ring) in one of seven colours, big or small, in one of five places, on one of four
/// backgrounds, with captions that name some or all of it ("a big red circle on the left on a black background",
/// "a photo of a yellow shape"). The class word <see cref="ClassWord"/> stands for any shape.
/// <para>
/// Some concepts are kept out of the base model's captions so they can be taught later (DreamBooth, LoRA, textual
/// inversion): shapes <see cref="HeldOutShapes"/> and colours <see cref="HeldOutColours"/>; <see cref="Concepts"/> names
/// the ones the demo and the tests teach. Everything is a pure function of a seed.
/// </para>
/// </summary>
public static class ToyWorld
{
    /// <summary>Side of the world's images in pixels (16x16 latents in the toy model's VAE).</summary>
    public const int ImageSize = 64;

    /// <summary>The word captions use when they do not name the shape, and the DreamBooth class word of the held-out concepts.</summary>
    public const string ClassWord = "shape";

    public static IReadOnlyList<string> Shapes { get; } = ["circle", "square", "triangle", "star", "ring"];
    public static IReadOnlyList<string> HeldOutShapes { get; } = ["cross", "heart"];

    public static IReadOnlyList<ToyColour> Colours { get; } =
    [
        new("red", 220, 40, 40), new("orange", 245, 140, 20), new("yellow", 240, 220, 40), new("green", 40, 180, 60),
        new("blue", 40, 100, 235), new("purple", 140, 50, 190), new("white", 245, 245, 245),
    ];

    public static IReadOnlyList<ToyColour> HeldOutColours { get; } = [new("pink", 255, 120, 200), new("teal", 0, 150, 150)];

    public static IReadOnlyList<ToyColour> Backgrounds { get; } =
    [
        new("black", 15, 15, 15), new("gray", 128, 128, 128), new("navy", 20, 30, 90), new("white", 245, 245, 245),
    ];

    public static IReadOnlyList<string> Sizes { get; } = ["small", "big"];

    /// <summary>Where the shape stands, as captions say it, with the centre each phrase means (fractions of the side).</summary>
    public static IReadOnlyList<(string Phrase, double X, double Y)> Positions { get; } =
    [
        ("in the middle", 0.5, 0.5), ("on the left", 0.27, 0.5), ("on the right", 0.73, 0.5), ("at the top", 0.5, 0.27), ("at the bottom", 0.5, 0.73),
    ];

    /// <summary>Every colour the world draws (base, held-out and backgrounds), by name: the scorer's palette.</summary>
    public static IReadOnlyList<ToyColour> Palette { get; } =
        Colours.Concat(HeldOutColours).Concat(Backgrounds).GroupBy(c => c.Name).Select(g => g.First()).ToList();

    public static ToyColour Colour(string name) => Palette.FirstOrDefault(c => c.Name == name)
        ?? throw new ArgumentException($"'{name}' is not a colour of the toy world", nameof(name));

    /// <summary>The held-out concepts to teach, each a shape and colour the base model never saw named.</summary>
    public static IReadOnlyList<ToyConcept> Concepts { get; } =
    [
        new("pink-cross", "cross", "pink"),
        new("teal-heart", "heart", "teal"),
    ];

    /// <summary>
    /// The concept the demo teaches ("a photo of sks shape"): the teal heart, because the bundled model's VAE
    /// reconstructs teal (as a blue-green) but turns pink into yellow, so no training could make the pink cross appear.
    /// </summary>
    public static ToyConcept DemoConcept => Concepts[1];

    public static ToyConcept Concept(string name) => Concepts.FirstOrDefault(c => c.Name == name)
        ?? throw new SdLoraException($"unknown toy concept '{name}': use {string.Join(", ", Concepts.Select(c => c.Name))}");

    // ---------------------------------------------------------------------------------------------------------------
    // Scenes
    // ---------------------------------------------------------------------------------------------------------------

    /// <summary>A random base scene (base shapes and colours only; the colour never equals the background).</summary>
    public static ToyScene RandomScene(Random rng) =>
        RandomScene(rng, Shapes[rng.Next(Shapes.Count)], null, null);

    /// <summary>
    /// A scene of <paramref name="shape"/> with the given colour and background, or random ones where null; size and place
    /// are random. Background and colour always differ.
    /// </summary>
    public static ToyScene RandomScene(Random rng, string shape, ToyColour? colour, ToyColour? background)
    {
        var bgChoices = colour is null ? Backgrounds : Backgrounds.Where(b => b.Name != colour.Name).ToList();
        var bg = background ?? bgChoices[rng.Next(bgChoices.Count)];
        var fgChoices = Colours.Where(c => c.Name != bg.Name).ToList();
        var fg = colour ?? fgChoices[rng.Next(fgChoices.Count)];
        return Place(rng, shape, fg, bg, Sizes[rng.Next(Sizes.Count)], Positions[rng.Next(Positions.Count)].Phrase);
    }

    /// <summary>A scene with everything named, the radius and centre jittered around what the size and position words mean.</summary>
    public static ToyScene Place(Random rng, string shape, ToyColour colour, ToyColour background, string size, string position)
    {
        double radius = size == "small" ? 0.18 + 0.04 * rng.NextDouble() : 0.28 + 0.05 * rng.NextDouble();
        var anchor = Positions.First(p => p.Phrase == position);
        double margin = radius + 0.03;
        double x = Math.Clamp(anchor.X + (rng.NextDouble() - 0.5) * 0.1, margin, 1 - margin);
        double y = Math.Clamp(anchor.Y + (rng.NextDouble() - 0.5) * 0.1, margin, 1 - margin);
        return new ToyScene(shape, colour, background, size, position, radius, x, y);
    }

    /// <summary>
    /// A caption of <paramref name="scene"/> naming some of it: the shape (or the class word), its colour, size, place and
    /// background are each left out at random, so the model learns every word on its own and the class word alone.
    /// </summary>
    public static string Caption(ToyScene scene, Random rng)
    {
        bool colour = rng.NextDouble() < 0.85, size = rng.NextDouble() < 0.5, position = rng.NextDouble() < 0.5;
        bool background = rng.NextDouble() < 0.6, shapeWord = rng.NextDouble() < 0.85, photo = rng.NextDouble() < 0.3;
        return Describe(scene, colour, size, position, background, shapeWord, photo);
    }

    /// <summary>The caption that names everything: "a big red circle on the left on a black background".</summary>
    public static string FullCaption(ToyScene scene) => Describe(scene, true, true, true, true, true, false);

    private static string Describe(ToyScene s, bool colour, bool size, bool position, bool background, bool shapeWord, bool photo)
    {
        var words = new List<string>();
        if (size) words.Add(s.Size);
        if (colour) words.Add(s.Colour.Name);
        words.Add(shapeWord ? s.Shape : ClassWord);
        if (position) words.Add(s.Position);
        if (background) words.Add($"on {Article(s.Background.Name)} {s.Background.Name} background");
        return (photo ? "a photo of " : "") + Article(words[0]) + " " + string.Join(' ', words);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Rendering
    // ---------------------------------------------------------------------------------------------------------------

    /// <summary>Draws <paramref name="scene"/> at <paramref name="size"/> pixels square, anti-aliased (4x4 samples per pixel).</summary>
    public static RgbImage Render(ToyScene scene, int size = ImageSize)
    {
        var px = new byte[size * size * 3];
        var coverage = Coverage(scene.Shape, scene.Radius, scene.X, scene.Y, size);
        var fg = scene.Colour;
        var bg = scene.Background;
        for (int i = 0; i < size * size; i++)
        {
            double a = coverage[i];
            px[i * 3] = Blend(bg.R, fg.R, a);
            px[i * 3 + 1] = Blend(bg.G, fg.G, a);
            px[i * 3 + 2] = Blend(bg.B, fg.B, a);
        }
        return new RgbImage(size, size, px);
    }

    private static byte Blend(byte bg, byte fg, double a) => (byte)Math.Round(bg + (fg - bg) * a);

    /// <summary>Fraction of each pixel the shape covers (row-major, <paramref name="size"/>^2 values in [0, 1]).</summary>
    public static double[] Coverage(string shape, double radius, double cx, double cy, int size)
    {
        const int ss = 4;
        var cov = new double[size * size];
        double r = radius * size, x0 = cx * size, y0 = cy * size;
        for (int py = 0; py < size; py++)
            for (int pxl = 0; pxl < size; pxl++)
            {
                // Pixels far outside the circumscribed circle are skipped.
                double dx = pxl + 0.5 - x0, dy = py + 0.5 - y0;
                if (dx * dx + dy * dy > (r + 1.5) * (r + 1.5)) continue;
                int hits = 0;
                for (int sy = 0; sy < ss; sy++)
                    for (int sx = 0; sx < ss; sx++)
                    {
                        double u = (pxl + (sx + 0.5) / ss - x0) / r, v = (py + (sy + 0.5) / ss - y0) / r;
                        if (Inside(shape, u, v)) hits++;
                    }
                cov[py * size + pxl] = hits / (double)(ss * ss);
            }
        return cov;
    }

    /// <summary>
    /// Whether the point (u, v) lies in the unit shape (circumscribed radius 1, y down, pointing up), for the base and
    /// held-out shapes. Sizes are balanced so the shapes look about equally big; each shape's centroid is the origin.
    /// </summary>
    public static bool Inside(string shape, double u, double v) => shape switch
    {
        "circle" => u * u + v * v <= 0.9 * 0.9,
        "square" => Math.Abs(u) <= 0.72 && Math.Abs(v) <= 0.72,
        "triangle" => InsidePolygon(u, v, TrianglePoints),
        "star" => InsidePolygon(u, v, StarPoints),
        "ring" => u * u + v * v <= 0.95 * 0.95 && u * u + v * v >= 0.5 * 0.5,
        "cross" => (Math.Abs(u) <= 0.3 && Math.Abs(v) <= 0.9) || (Math.Abs(v) <= 0.3 && Math.Abs(u) <= 0.9),
        "heart" => InsideHeart(u, v),
        _ => throw new ArgumentException($"'{shape}' is not a shape of the toy world", nameof(shape)),
    };

    private static readonly (double X, double Y)[] TrianglePoints =
        [.. Enumerable.Range(0, 3).Select(i => (Math.Cos(-Math.PI / 2 + i * 2 * Math.PI / 3), Math.Sin(-Math.PI / 2 + i * 2 * Math.PI / 3)))];

    private static readonly (double X, double Y)[] StarPoints =
        [.. Enumerable.Range(0, 10).Select(i => (i % 2 == 0 ? 1.0 : 0.42) is var rr ? (rr * Math.Cos(-Math.PI / 2 + i * Math.PI / 5), rr * Math.Sin(-Math.PI / 2 + i * Math.PI / 5)) : default)];

    private static bool InsidePolygon(double x, double y, (double X, double Y)[] poly)
    {
        bool inside = false;
        for (int i = 0, j = poly.Length - 1; i < poly.Length; j = i++)
        {
            var (xi, yi) = poly[i];
            var (xj, yj) = poly[j];
            if ((yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
        }
        return inside;
    }

    // The classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled into the unit circle, y up.
    private static bool InsideHeart(double u, double v)
    {
        double x = u * 1.25, y = -v * 1.25 + 0.15;
        double a = x * x + y * y - 1;
        return a * a * a - x * x * y * y * y <= 0;
    }

    /// <summary>"an" before a vowel, else "a".</summary>
    public static string Article(string word) => "aeiou".Contains(word[0]) ? "an" : "a";

}

/// <summary>
/// A held-out concept: a <see cref="Shape"/> in a <see cref="Colour"/> the base model's captions never name, taught later
/// as "a photo of sks shape" (DreamBooth) or as a new token (textual inversion).
/// </summary>
public sealed record ToyConcept(string Name, string Shape, string ColourName)
{
    public ToyColour Colour => ToyWorld.Colour(ColourName);

    /// <summary>One instance picture: the concept in a random size and place on a random base background.</summary>
    public ToyScene Scene(Random rng)
    {
        var bg = ToyWorld.Backgrounds[rng.Next(ToyWorld.Backgrounds.Count)];
        return ToyWorld.Place(rng, Shape, Colour, bg, ToyWorld.Sizes[rng.Next(ToyWorld.Sizes.Count)],
            ToyWorld.Positions[rng.Next(ToyWorld.Positions.Count)].Phrase);
    }

    /// <summary>What the concept's pictures must show, for the scorer.</summary>
    public ToyPrompt Target => new(Shape, Colour, null, null, null);
}
