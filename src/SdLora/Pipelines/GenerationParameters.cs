using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace SdLora.Pipelines;

/// <summary>
/// The settings of one generated image, in the A1111 "parameters" text form that webui, ComfyUI and
/// image sites read: prompt lines, a <c>Negative prompt:</c> line, then <c>Key: value, Key: value</c>.
/// </summary>
public sealed record GenerationParameters
{
    public string Prompt { get; init; } = "";
    public string NegativePrompt { get; init; } = "";
    public int Steps { get; init; } = 20;
    /// <summary>A1111 sampler name, e.g. "Euler a".</summary>
    public string Sampler { get; init; } = "Euler a";
    public double CfgScale { get; init; } = 7;
    public long Seed { get; init; }
    public int Width { get; init; } = 512;
    public int Height { get; init; } = 512;
    public string? ModelHash { get; init; }
    public string? Model { get; init; }
    public int ClipSkip { get; init; } = 1;
    /// <summary>LoRA name -> short hash, written as <c>Lora hashes: "name: hash, ..."</c>.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> LoraHashes { get; init; } = [];
    /// <summary>Textual-inversion embedding name -> short hash, written as <c>TI hashes: "name: hash, ..."</c>.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> TextualInversionHashes { get; init; } = [];
    /// <summary>Any other key/value pairs (kept in order when parsing foreign text).</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Extra { get; init; } = [];

    public string ToInfotext()
    {
        var fields = new List<(string, string)>
        {
            ("Steps", Steps.ToString(CultureInfo.InvariantCulture)),
            ("Sampler", Sampler),
            ("CFG scale", CfgScale.ToString("0.###", CultureInfo.InvariantCulture)),
            ("Seed", Seed.ToString(CultureInfo.InvariantCulture)),
            ("Size", $"{Width}x{Height}"),
        };
        if (ModelHash is not null) fields.Add(("Model hash", ModelHash));
        if (Model is not null) fields.Add(("Model", Model));
        if (ClipSkip > 1) fields.Add(("Clip skip", ClipSkip.ToString(CultureInfo.InvariantCulture)));
        if (LoraHashes.Count > 0) fields.Add(("Lora hashes", HashList(LoraHashes)));
        if (TextualInversionHashes.Count > 0) fields.Add(("TI hashes", HashList(TextualInversionHashes)));
        fields.AddRange(Extra.Select(kv => (kv.Key, kv.Value)));

        var sb = new StringBuilder(Prompt);
        if (NegativePrompt.Length > 0) sb.Append("\nNegative prompt: ").Append(NegativePrompt);
        sb.Append('\n').Append(string.Join(", ", fields.Select(f => $"{f.Item1}: {Quote(f.Item2)}")));
        return sb.ToString();
    }

    // A1111 drops ':' and ',' from names in its hash lists, which would break the list apart.
    private static string HashList(IEnumerable<KeyValuePair<string, string>> hashes) =>
        string.Join(", ", hashes.Select(kv => $"{kv.Key.Replace(":", "").Replace(",", "")}: {kv.Value}"));

    private static List<KeyValuePair<string, string>> ParseHashList(string v) =>
        v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(e => e.Split(':', 2)).Select(a => new KeyValuePair<string, string>(a[0].Trim(), a.Length > 1 ? a[1].Trim() : "")).ToList();

    // A1111 quotes a value (JSON string syntax) only when it holds a separator.
    private static string Quote(string v) => v.Contains(',') || v.Contains('\n') || v.Contains(':') ? JsonSerializer.Serialize(v) : v;

    private static readonly Regex Field = new(@"\s*(\w[\w \-/]+):\s*(""(?:\\.|[^\\""])+""|[^,]*)(?:,|$)", RegexOptions.Compiled);

    /// <summary>Parses A1111 infotext (as written by webui or by <see cref="ToInfotext"/>).</summary>
    public static GenerationParameters Parse(string text)
    {
        var lines = text.Replace("\r\n", "\n").Split('\n').ToList();
        var pairs = new List<KeyValuePair<string, string>>();
        if (lines.Count > 0 && Field.Matches(lines[^1]).Count >= 3)
        {
            foreach (Match m in Field.Matches(lines[^1]))
            {
                var v = m.Groups[2].Value.Trim();
                if (v.StartsWith('"') && v.EndsWith('"') && v.Length >= 2)
                    v = JsonSerializer.Deserialize<string>(v) ?? v;
                pairs.Add(new(m.Groups[1].Value.Trim(), v));
            }
            lines.RemoveAt(lines.Count - 1);
        }
        var prompt = new List<string>();
        var negative = new List<string>();
        bool inNegative = false;
        foreach (var line in lines)
        {
            if (line.StartsWith("Negative prompt:", StringComparison.Ordinal)) { inNegative = true; negative.Add(line["Negative prompt:".Length..].TrimStart()); }
            else (inNegative ? negative : prompt).Add(line);
        }

        var p = new GenerationParameters { Prompt = string.Join("\n", prompt).Trim(), NegativePrompt = string.Join("\n", negative).Trim() };
        var extra = new List<KeyValuePair<string, string>>();
        foreach (var (k, v) in pairs)
        {
            switch (k)
            {
                case "Steps": p = p with { Steps = int.Parse(v, CultureInfo.InvariantCulture) }; break;
                case "Sampler": p = p with { Sampler = v }; break;
                case "CFG scale": p = p with { CfgScale = double.Parse(v, CultureInfo.InvariantCulture) }; break;
                case "Seed": p = p with { Seed = long.Parse(v, CultureInfo.InvariantCulture) }; break;
                case "Size":
                    var wh = v.Split('x');
                    p = p with { Width = int.Parse(wh[0], CultureInfo.InvariantCulture), Height = int.Parse(wh[1], CultureInfo.InvariantCulture) };
                    break;
                case "Model hash": p = p with { ModelHash = v }; break;
                case "Model": p = p with { Model = v }; break;
                case "Clip skip": p = p with { ClipSkip = int.Parse(v, CultureInfo.InvariantCulture) }; break;
                case "Lora hashes": p = p with { LoraHashes = ParseHashList(v) }; break;
                case "TI hashes": p = p with { TextualInversionHashes = ParseHashList(v) }; break;
                default: extra.Add(new(k, v)); break;
            }
        }
        return p with { Extra = extra };
    }
}
