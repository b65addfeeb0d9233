using System.Globalization;

namespace SdLora.Training;

/// <summary>One line of a <c>--sample-prompts</c> file.</summary>
public sealed record SamplePrompt(string Prompt, string NegativePrompt, int Width, int Height, long Seed, double CfgScale, int Steps);

/// <summary>
/// kohya's sample-prompt files: one prompt per line with optional <c>--n negative</c>, <c>--w 512</c>, <c>--h 512</c>,
/// <c>--d seed</c>, <c>--l cfg</c>, <c>--s steps</c>; blank lines and <c># comments</c> are skipped. Without <c>--d</c>
/// line i uses <c>seed + i</c>, so samples of successive epochs are comparable.
/// </summary>
public static class SamplePrompts
{
    public static List<SamplePrompt> Read(string path, int width, int height, long seed)
    {
        if (!File.Exists(path)) throw new SdLoraException($"sample-prompts {path}: file not found (one prompt per line, e.g. 'a photo of sks dog --n blurry --s 20')");
        var lines = File.ReadAllLines(path);
        var prompts = new List<SamplePrompt>();
        for (int i = 0; i < lines.Length; i++)
        {
            var line = lines[i].Trim();
            if (line.Length == 0 || line.StartsWith('#')) continue;
            prompts.Add(Parse(line, width, height, seed + prompts.Count, $"{path}:{i + 1}"));
        }
        if (prompts.Count == 0) throw new SdLoraException($"sample-prompts {path}: no prompts (every line is empty or a # comment)");
        return prompts;
    }

    public static SamplePrompt Parse(string line, int width, int height, long seed, string where = "sample prompt")
    {
        var parts = (" " + line).Split(" --");
        var p = new SamplePrompt(parts[0].Trim(), "", width, height, seed, 7.5, 20);
        foreach (var part in parts.Skip(1))
        {
            var t = part.Trim();
            int sp = t.IndexOf(' ');
            string key = sp < 0 ? t : t[..sp], value = sp < 0 ? "" : t[(sp + 1)..].Trim();
            try
            {
                p = key switch
                {
                    "n" => p with { NegativePrompt = value },
                    "w" => p with { Width = int.Parse(value, CultureInfo.InvariantCulture) },
                    "h" => p with { Height = int.Parse(value, CultureInfo.InvariantCulture) },
                    "d" => p with { Seed = long.Parse(value, CultureInfo.InvariantCulture) },
                    "l" => p with { CfgScale = double.Parse(value, CultureInfo.InvariantCulture) },
                    "s" => p with { Steps = int.Parse(value, CultureInfo.InvariantCulture) },
                    _ => throw new SdLoraException($"{where}: unknown option --{key}: use --n (negative), --w, --h, --d (seed), --l (cfg), --s (steps)"),
                };
            }
            catch (FormatException) { throw new SdLoraException($"{where}: --{key} needs a number (got '{value}')"); }
            catch (OverflowException) { throw new SdLoraException($"{where}: --{key} {value} is out of range"); }
        }
        if (p.Width % 8 != 0 || p.Height % 8 != 0 || p.Width < 64 || p.Height < 64)
            throw new SdLoraException($"{where}: size {p.Width}x{p.Height} must be multiples of 8 and at least 64");
        if (p.Steps is < 1 or > 1000) throw new SdLoraException($"{where}: --s {p.Steps} must be between 1 and 1000");
        return p;
    }
}
