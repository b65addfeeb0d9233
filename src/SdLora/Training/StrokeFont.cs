using SkiaSharp;

namespace SdLora.Training;

/// <summary>
/// A tiny vector font (digits, lowercase letters, a few signs) drawn as strokes on a 4x6 grid, so plots get
/// readable labels without depending on system fonts (the NoDependencies Skia build has no fontconfig).
/// </summary>
internal static class StrokeFont
{
    private static readonly Dictionary<char, float[][]> Glyphs = new()
    {
        ['0'] = [[0, 0, 4, 0, 4, 6, 0, 6, 0, 0], [4, 0, 0, 6]],
        ['1'] = [[1, 1, 2, 0, 2, 6], [1, 6, 3, 6]],
        ['2'] = [[0, 0, 4, 0, 4, 3, 0, 3, 0, 6, 4, 6]],
        ['3'] = [[0, 0, 4, 0, 4, 6, 0, 6], [1, 3, 4, 3]],
        ['4'] = [[0, 0, 0, 3, 4, 3], [3, 0, 3, 6]],
        ['5'] = [[4, 0, 0, 0, 0, 3, 4, 3, 4, 6, 0, 6]],
        ['6'] = [[4, 0, 0, 0, 0, 6, 4, 6, 4, 3, 0, 3]],
        ['7'] = [[0, 0, 4, 0, 1, 6]],
        ['8'] = [[0, 0, 4, 0, 4, 6, 0, 6, 0, 0], [0, 3, 4, 3]],
        ['9'] = [[4, 3, 0, 3, 0, 0, 4, 0, 4, 6, 0, 6]],
        ['.'] = [[1.6f, 5.6f, 2.4f, 5.6f, 2.4f, 6, 1.6f, 6, 1.6f, 5.6f]],
        [','] = [[2, 5.5f, 1, 7]],
        [':'] = [[2, 2, 2, 2.5f], [2, 5.5f, 2, 6]],
        ['-'] = [[1, 3, 3, 3]],
        ['+'] = [[1, 3, 3, 3], [2, 2, 2, 4]],
        ['='] = [[0, 2.5f, 4, 2.5f], [0, 4.5f, 4, 4.5f]],
        ['('] = [[3, 0, 1, 2, 1, 4, 3, 6]],
        [')'] = [[1, 0, 3, 2, 3, 4, 1, 6]],
        ['/'] = [[4, 0, 0, 6]],
        ['a'] = [[0, 2, 4, 2, 4, 6, 0, 6, 0, 4, 4, 4]],
        ['b'] = [[0, 0, 0, 6, 4, 6, 4, 2, 0, 2]],
        ['c'] = [[4, 2, 0, 2, 0, 6, 4, 6]],
        ['d'] = [[4, 0, 4, 6, 0, 6, 0, 2, 4, 2]],
        ['e'] = [[0, 4, 4, 4, 4, 2, 0, 2, 0, 6, 4, 6]],
        ['f'] = [[4, 0, 2, 0, 2, 6], [0, 2, 4, 2]],
        ['g'] = [[4, 6, 0, 6, 0, 2, 4, 2, 4, 8, 0, 8]],
        ['h'] = [[0, 0, 0, 6], [0, 2, 4, 2, 4, 6]],
        ['i'] = [[2, 2, 2, 6], [2, 0, 2, 0.7f]],
        ['k'] = [[0, 0, 0, 6], [4, 2, 0, 4, 4, 6]],
        ['l'] = [[2, 0, 2, 6]],
        ['m'] = [[0, 6, 0, 2, 4, 2, 4, 6], [2, 2, 2, 6]],
        ['n'] = [[0, 6, 0, 2, 4, 2, 4, 6]],
        ['o'] = [[0, 2, 4, 2, 4, 6, 0, 6, 0, 2]],
        ['p'] = [[0, 8, 0, 2, 4, 2, 4, 6, 0, 6]],
        ['r'] = [[0, 6, 0, 2], [0, 3, 1, 2, 4, 2]],
        ['s'] = [[4, 2, 0, 2, 0, 4, 4, 4, 4, 6, 0, 6]],
        ['t'] = [[2, 0, 2, 6, 4, 6], [0, 2, 4, 2]],
        ['u'] = [[0, 2, 0, 6, 4, 6, 4, 2]],
        ['v'] = [[0, 2, 2, 6, 4, 2]],
        ['w'] = [[0, 2, 1, 6, 2, 4, 3, 6, 4, 2]],
        ['x'] = [[0, 2, 4, 6], [4, 2, 0, 6]],
        ['y'] = [[0, 2, 0, 6, 4, 6], [4, 2, 4, 8, 0, 8]],
    };

    /// <summary>Width of <paramref name="text"/> at cap height <paramref name="size"/>.</summary>
    public static float Measure(string text, float size) => text.Length * 6 * size / 6f;

    /// <summary>Draws text with its top-left at (x, y); <paramref name="size"/> is the digit height in pixels.</summary>
    public static void Draw(SKCanvas canvas, string text, float x, float y, float size, SKColor color, bool vertical = false)
    {
        float unit = size / 6f;
        using var paint = new SKPaint { Color = color, IsAntialias = true, Style = SKPaintStyle.Stroke, StrokeWidth = Math.Max(1f, size / 9f), StrokeCap = SKStrokeCap.Round, StrokeJoin = SKStrokeJoin.Round };
        using var path = new SKPath();
        float cursor = 0;
        foreach (var ch in text.ToLowerInvariant())
        {
            if (Glyphs.TryGetValue(ch, out var strokes))
                foreach (var s in strokes)
                {
                    for (int i = 0; i < s.Length; i += 2)
                    {
                        var p = Map(cursor + s[i] * unit, s[i + 1] * unit);
                        if (i == 0) path.MoveTo(p); else path.LineTo(p);
                    }
                }
            cursor += 6 * unit;
        }
        canvas.DrawPath(path, paint);

        SKPoint Map(float dx, float dy) => vertical ? new SKPoint(x + dy, y - dx) : new SKPoint(x + dx, y + dy);
    }
}
