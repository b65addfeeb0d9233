using System.Globalization;
using System.Text.RegularExpressions;

namespace SdLora.Pipelines;

/// <summary>A1111-style output names, <c>00012-&lt;seed&gt;.png</c>: numbered after the highest existing number, never overwriting.</summary>
public static class OutputNaming
{
    private static readonly Regex Numbered = new(@"^(\d{5,})-", RegexOptions.Compiled);

    public static int NextNumber(string directory)
    {
        if (!Directory.Exists(directory)) return 0;
        int max = -1;
        foreach (var f in Directory.EnumerateFiles(directory))
        {
            var m = Numbered.Match(Path.GetFileName(f));
            if (m.Success && int.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int n)) max = Math.Max(max, n);
        }
        return max + 1;
    }

    /// <summary>The path for the next image; skips numbers whose file already exists.</summary>
    public static string NextPath(string directory, long seed, string extension = ".png")
    {
        Directory.CreateDirectory(directory);
        for (int n = NextNumber(directory); ; n++)
        {
            var path = Path.Combine(directory, $"{n:D5}-{seed}{extension}");
            if (!File.Exists(path)) return path;
        }
    }
}
