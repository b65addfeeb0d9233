using SdLora.Imaging;

namespace SdLora.Toy;

/// <summary>
/// How well a picture shows a <see cref="ToyPrompt"/>, each part in [0, 1] (null where the prompt does not name it), and
/// what the picture seems to show. <see cref="Overall"/> is the mean of the parts the prompt names.
/// </summary>
public sealed record ToyScore(double Overall, double? Shape, double? Colour, double? Background, double? Size, double? Position,
    string? SeenShape, string? SeenColour, string SeenBackground, double ForegroundFraction);

/// <summary>What <see cref="ToyScorer.Analyse"/> sees in a picture: background, foreground mask and its colours.</summary>
public sealed class ToyAnalysis
{
    public required int Width { get; init; }
    public required int Height { get; init; }
    /// <summary>Nearest palette colour of each pixel (index into <see cref="ToyWorld.Palette"/>).</summary>
    public required int[] PaletteIndex { get; init; }
    public required ToyColour Background { get; init; }
    /// <summary>Fraction of the border pixels that are <see cref="Background"/>.</summary>
    public required double BorderAgreement { get; init; }
    /// <summary>Pixels that differ clearly from the background.</summary>
    public required bool[] Foreground { get; init; }
    /// <summary>The largest 4-connected part of <see cref="Foreground"/>: the shape.</summary>
    public required bool[] Shape { get; init; }
    /// <summary>Share of each palette colour among the foreground's inner pixels (edges are blends, so they are left out).</summary>
    public required double[] ColourHistogram { get; init; }
}

/// <summary>
/// Scores pictures against prompts of the toy world without any model: the background is the commonest palette colour
/// on the border, the foreground every pixel clearly different from it; the colour score is the overlap of the
/// foreground's colour histogram with the renderer's own rendering of the prompt, the shape score the overlap (IoU) of
/// the foreground mask with the rendered shape's mask after both are centred on their centroid and scaled to the same
/// area (so size and place do not count there; the size and position scores check them when named).
/// </summary>
public static class ToyScorer
{
    /// <summary>RGB distance from the background above which a pixel is foreground.</summary>
    private const double ForegroundDistance = 60;
    private const int Border = 2;
    private const int Grid = 48;
    private const double GridExtent = 1.3;

    private static readonly Dictionary<string, bool[]> ReferenceMasks = new();

    public static ToyScore Score(RgbImage image, ToyPrompt target)
    {
        var a = Analyse(image);
        int pixels = a.Width * a.Height;
        int shapePixels = a.Shape.Count(b => b);
        double fgFraction = a.Foreground.Count(b => b) / (double)pixels;

        double? shape = target.Shape is { } s ? (shapePixels == 0 ? 0 : NormalizedIoU(a.Shape, ReferenceMask(s), a.Width)) : null;
        double? colour = null;
        if (target.Colour is { } c)
        {
            var reference = ReferenceHistogram(target);
            colour = a.ColourHistogram.Zip(reference, Math.Min).Sum();
        }
        double? background = target.Background is { } bg ? BorderShare(a, bg) : null;
        double? size = null, position = null;
        if (target.Size is { } sz) size = shapePixels == 0 ? 0 : (SizeOf(shapePixels / (double)pixels, target.Shape ?? SeenShape(a)!) == sz ? 1 : 0);
        if (target.Position is { } pos) position = shapePixels == 0 ? 0 : (PositionOf(a.Shape, a.Width) == pos ? 1 : 0);

        var parts = new[] { shape, colour, background, size, position }.Where(p => p is not null).Select(p => p!.Value).ToList();
        return new ToyScore(parts.Count == 0 ? 0 : parts.Average(), shape, colour, background, size, position,
            SeenShape(a), SeenColour(a), a.Background.Name, fgFraction);
    }

    /// <summary>The shape (base or held-out) whose mask best overlaps the picture's foreground, or null when there is none.</summary>
    public static string? SeenShape(ToyAnalysis a)
    {
        if (!a.Shape.Any(b => b)) return null;
        return ToyWorld.Shapes.Concat(ToyWorld.HeldOutShapes).MaxBy(s => NormalizedIoU(a.Shape, ReferenceMask(s), a.Width));
    }

    /// <summary>The commonest colour of the foreground, or null when there is none.</summary>
    public static string? SeenColour(ToyAnalysis a)
    {
        double max = a.ColourHistogram.Max();
        return max <= 0 ? null : ToyWorld.Palette[Array.IndexOf(a.ColourHistogram, max)].Name;
    }

    public static ToyAnalysis Analyse(RgbImage image)
    {
        int w = image.Width, h = image.Height, n = w * h;
        var palette = ToyWorld.Palette;
        var index = new int[n];
        var px = image.Pixels;
        for (int i = 0; i < n; i++) index[i] = Nearest(px[i * 3], px[i * 3 + 1], px[i * 3 + 2]);

        var borderCounts = new int[palette.Count];
        int borderTotal = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                if (x < Border || y < Border || x >= w - Border || y >= h - Border) { borderCounts[index[y * w + x]]++; borderTotal++; }
        int bgIndex = Array.IndexOf(borderCounts, borderCounts.Max());
        var bg = palette[bgIndex];

        // The background's actual colour (mean of its border pixels), so a slightly off-colour background is not foreground.
        double br = 0, bgG = 0, bb = 0; int bn = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int i = y * w + x;
                if ((x < Border || y < Border || x >= w - Border || y >= h - Border) && index[i] == bgIndex) { br += px[i * 3]; bgG += px[i * 3 + 1]; bb += px[i * 3 + 2]; bn++; }
            }
        br /= bn; bgG /= bn; bb /= bn;

        var fg = new bool[n];
        for (int i = 0; i < n; i++)
        {
            double dr = px[i * 3] - br, dg = px[i * 3 + 1] - bgG, db = px[i * 3 + 2] - bb;
            fg[i] = Math.Sqrt(dr * dr + dg * dg + db * db) > ForegroundDistance;
        }
        var shape = LargestComponent(fg, w, h);

        var hist = new double[palette.Count];
        var inner = Erode(fg, w, h);
        var counted = inner.Any(b => b) ? inner : fg;
        int total = 0;
        for (int i = 0; i < n; i++)
            if (counted[i] && index[i] != bgIndex) { hist[index[i]]++; total++; }
        if (total > 0) for (int k = 0; k < hist.Length; k++) hist[k] /= total;

        return new ToyAnalysis
        {
            Width = w, Height = h, PaletteIndex = index, Background = bg, BorderAgreement = borderCounts[bgIndex] / (double)borderTotal,
            Foreground = fg, Shape = shape, ColourHistogram = hist,
        };
    }

    private static double BorderShare(ToyAnalysis a, ToyColour colour)
    {
        int target = IndexOf(colour), hits = 0, total = 0;
        for (int y = 0; y < a.Height; y++)
            for (int x = 0; x < a.Width; x++)
                if (x < Border || y < Border || x >= a.Width - Border || y >= a.Height - Border)
                {
                    total++;
                    if (a.PaletteIndex[y * a.Width + x] == target) hits++;
                }
        return hits / (double)total;
    }

    private static int IndexOf(ToyColour c)
    {
        for (int i = 0; i < ToyWorld.Palette.Count; i++) if (ToyWorld.Palette[i].Name == c.Name) return i;
        throw new ArgumentException($"'{c.Name}' is not in the toy palette");
    }

    private static int Nearest(byte r, byte g, byte b)
    {
        int best = 0, bestD = int.MaxValue;
        for (int k = 0; k < ToyWorld.Palette.Count; k++)
        {
            var c = ToyWorld.Palette[k];
            int dr = r - c.R, dg = g - c.G, db = b - c.B, d = dr * dr + dg * dg + db * db;
            if (d < bestD) { bestD = d; best = k; }
        }
        return best;
    }

    /// <summary>The colour histogram the renderer's own picture of <paramref name="target"/> has (its shape in its colours).</summary>
    private static double[] ReferenceHistogram(ToyPrompt target)
    {
        var bg = ToyWorld.Backgrounds.First(b => b.Name != target.Colour!.Name);
        var scene = new ToyScene(target.Shape ?? "square", target.Colour!, bg, "big", "in the middle", 0.3, 0.5, 0.5);
        return Analyse(ToyWorld.Render(scene)).ColourHistogram;
    }

    private static bool[] ReferenceMask(string shape)
    {
        lock (ReferenceMasks)
        {
            if (ReferenceMasks.TryGetValue(shape, out var m)) return m;
            m = ToyWorld.Coverage(shape, 0.3, 0.5, 0.5, ToyWorld.ImageSize).Select(c => c >= 0.5).ToArray();
            ReferenceMasks[shape] = m;
            return m;
        }
    }

    /// <summary>
    /// "small" or "big": whichever size word's typical area for <paramref name="shape"/> (its rendered area at the mean
    /// radius of each size) the picture's area is closer to, in log scale.
    /// </summary>
    private static string SizeOf(double areaFraction, string shape)
    {
        const double referenceRadius = 0.3, small = 0.2, big = 0.305;
        double perR2 = ReferenceMask(shape).Count(b => b) / (double)(ToyWorld.ImageSize * ToyWorld.ImageSize) / (referenceRadius * referenceRadius);
        double la = Math.Log(areaFraction);
        return Math.Abs(la - Math.Log(perR2 * small * small)) <= Math.Abs(la - Math.Log(perR2 * big * big)) ? "small" : "big";
    }

    /// <summary>
    /// Where the shape's centroid lies: "in the middle" within <see cref="MiddleRadius"/> of the centre (placement jitter
    /// stays inside it), otherwise the side it leans to most.
    /// </summary>
    private static string PositionOf(bool[] mask, int w)
    {
        var (cx, cy, _) = Moments(mask, w);
        double dx = cx / w - 0.5, dy = cy / w - 0.5;
        if (Math.Max(Math.Abs(dx), Math.Abs(dy)) <= MiddleRadius) return "in the middle";
        return Math.Abs(dx) >= Math.Abs(dy) ? (dx < 0 ? "on the left" : "on the right") : (dy < 0 ? "at the top" : "at the bottom");
    }

    /// <summary>Half-width of the middle square (fraction of the side): a shape placed off-centre lies at least 0.14 away.</summary>
    private const double MiddleRadius = 0.105;

    private static (double Cx, double Cy, int Area) Moments(bool[] mask, int w)
    {
        double sx = 0, sy = 0; int area = 0;
        for (int i = 0; i < mask.Length; i++)
            if (mask[i]) { sx += i % w + 0.5; sy += i / w + 0.5; area++; }
        return area == 0 ? (0, 0, 0) : (sx / area, sy / area, area);
    }

    /// <summary>
    /// IoU of two masks after each is moved to its centroid and scaled by the square root of its area, sampled on a
    /// <see cref="Grid"/>x<see cref="Grid"/> grid: 1 for the same shape at any size and place.
    /// </summary>
    public static double NormalizedIoU(bool[] a, bool[] b, int w)
    {
        var (ax, ay, aa) = Moments(a, w);
        var (bx, by, ba) = Moments(b, w);
        if (aa == 0 || ba == 0) return 0;
        double sa = Math.Sqrt(aa), sb = Math.Sqrt(ba);
        int h = a.Length / w, inter = 0, union = 0;
        for (int gy = 0; gy < Grid; gy++)
            for (int gx = 0; gx < Grid; gx++)
            {
                double u = ((gx + 0.5) / Grid * 2 - 1) * GridExtent, v = ((gy + 0.5) / Grid * 2 - 1) * GridExtent;
                bool ina = Sample(a, w, h, ax + u * sa, ay + v * sa), inb = Sample(b, w, h, bx + u * sb, by + v * sb);
                if (ina && inb) inter++;
                if (ina || inb) union++;
            }
        return union == 0 ? 0 : inter / (double)union;
    }

    private static bool Sample(bool[] mask, int w, int h, double x, double y)
    {
        int ix = (int)Math.Floor(x), iy = (int)Math.Floor(y);
        return ix >= 0 && iy >= 0 && ix < w && iy < h && mask[iy * w + ix];
    }

    private static bool[] LargestComponent(bool[] mask, int w, int h)
    {
        var label = new int[mask.Length];
        int best = 0, bestSize = 0, next = 0;
        var stack = new Stack<int>();
        for (int i = 0; i < mask.Length; i++)
        {
            if (!mask[i] || label[i] != 0) continue;
            next++;
            int size = 0;
            label[i] = next;
            stack.Push(i);
            while (stack.Count > 0)
            {
                int p = stack.Pop();
                size++;
                int x = p % w, y = p / w;
                foreach (var q in new[] { x > 0 ? p - 1 : -1, x < w - 1 ? p + 1 : -1, y > 0 ? p - w : -1, y < h - 1 ? p + w : -1 })
                    if (q >= 0 && mask[q] && label[q] == 0) { label[q] = next; stack.Push(q); }
            }
            if (size > bestSize) { bestSize = size; best = next; }
        }
        return label.Select(l => l == best && best != 0).ToArray();
    }

    private static bool[] Erode(bool[] mask, int w, int h)
    {
        var r = new bool[mask.Length];
        for (int y = 1; y < h - 1; y++)
            for (int x = 1; x < w - 1; x++)
            {
                int i = y * w + x;
                r[i] = mask[i] && mask[i - 1] && mask[i + 1] && mask[i - w] && mask[i + w];
            }
        return r;
    }
}
