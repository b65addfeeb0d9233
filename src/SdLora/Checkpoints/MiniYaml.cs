using System.Globalization;

namespace SdLora.Checkpoints;

/// <summary>
/// Reads the small YAML subset that LDM configs (<c>v1-inference.yaml</c> and its kin) use: nested block mappings,
/// block sequences (<c>- 1</c>), flow sequences (<c>[ 4, 2, 1 ]</c>), plain or quoted scalars and comments.
/// Mappings become <c>Dictionary&lt;string, object?&gt;</c>, sequences <c>List&lt;object?&gt;</c>, scalars strings.
/// </summary>
public static class MiniYaml
{
    private sealed record Line(int Indent, string Text, int Number);

    public static Dictionary<string, object?> Parse(string text, string file)
    {
        var lines = new List<Line>();
        int n = 0;
        foreach (var raw in text.Replace("\r\n", "\n").Split('\n'))
        {
            n++;
            var noComment = StripComment(raw).TrimEnd();
            if (noComment.Trim().Length == 0 || noComment.Trim() == "---") continue;
            if (noComment.Contains('\t')) noComment = noComment.Replace('\t', ' ');
            int indent = noComment.Length - noComment.TrimStart().Length;
            lines.Add(new Line(indent, noComment.Trim(), n));
        }
        int pos = 0;
        if (lines.Count == 0) return new Dictionary<string, object?>();
        var root = ParseBlock(lines, ref pos, lines[0].Indent, file);
        if (pos < lines.Count) throw Bad(file, lines[pos], "unexpected indentation");
        return root as Dictionary<string, object?> ?? throw new SdLoraException($"{file}: the YAML's top level is not a mapping; pass an LDM config such as v1-inference.yaml");
    }

    private static SdLoraException Bad(string file, Line line, string problem) =>
        new($"{file}: line {line.Number}: {problem}; sdlora reads LDM config YAML (like v1-inference.yaml) — check the file");

    private static object ParseBlock(List<Line> lines, ref int pos, int indent, string file)
    {
        if (lines[pos].Text.StartsWith("- ", StringComparison.Ordinal) || lines[pos].Text == "-")
        {
            var list = new List<object?>();
            while (pos < lines.Count && lines[pos].Indent == indent && (lines[pos].Text.StartsWith("- ", StringComparison.Ordinal) || lines[pos].Text == "-"))
            {
                var item = lines[pos].Text.Length > 1 ? lines[pos].Text[2..].Trim() : "";
                pos++;
                if (item.Length == 0 && pos < lines.Count && lines[pos].Indent > indent) list.Add(ParseBlock(lines, ref pos, lines[pos].Indent, file));
                else list.Add(Scalar(item));
            }
            return list;
        }
        var map = new Dictionary<string, object?>();
        while (pos < lines.Count && lines[pos].Indent == indent)
        {
            var line = lines[pos];
            int colon = FindKeyColon(line.Text);
            if (colon < 0) throw Bad(file, line, $"expected 'key: value' but found '{line.Text}'");
            var key = Unquote(line.Text[..colon].Trim());
            var value = line.Text[(colon + 1)..].Trim();
            pos++;
            if (value.Length > 0) map[key] = Scalar(value);
            else if (pos < lines.Count && (lines[pos].Indent > indent
                     || (lines[pos].Indent == indent && lines[pos].Text.StartsWith("- ", StringComparison.Ordinal))))
                map[key] = ParseBlock(lines, ref pos, lines[pos].Indent, file);
            else map[key] = null;
        }
        return map;
    }

    private static int FindKeyColon(string text)
    {
        bool inQuote = false;
        char q = '\0';
        for (int i = 0; i < text.Length; i++)
        {
            char ch = text[i];
            if (inQuote) { if (ch == q) inQuote = false; continue; }
            if (ch is '"' or '\'') { inQuote = true; q = ch; continue; }
            if (ch == ':' && (i + 1 == text.Length || text[i + 1] == ' ')) return i;
        }
        return -1;
    }

    private static object? Scalar(string value)
    {
        if (value.StartsWith('[') && value.EndsWith(']'))
        {
            var inner = value[1..^1].Trim();
            return inner.Length == 0 ? new List<object?>() : inner.Split(',').Select(s => Scalar(s.Trim())).ToList();
        }
        if (value is "null" or "~") return null;
        return Unquote(value);
    }

    private static string Unquote(string s) =>
        s.Length >= 2 && (s[0] == '"' && s[^1] == '"' || s[0] == '\'' && s[^1] == '\'') ? s[1..^1] : s;

    private static string StripComment(string line)
    {
        bool inQuote = false;
        char q = '\0';
        for (int i = 0; i < line.Length; i++)
        {
            char ch = line[i];
            if (inQuote) { if (ch == q) inQuote = false; continue; }
            if (ch is '"' or '\'') { inQuote = true; q = ch; continue; }
            if (ch == '#' && (i == 0 || line[i - 1] is ' ' or '\t')) return line[..i];
        }
        return line;
    }

    /// <summary>The value at a dotted path (<c>model.params.unet_config.params</c>), or null.</summary>
    public static object? At(Dictionary<string, object?> root, string path)
    {
        object? cur = root;
        foreach (var part in path.Split('.'))
        {
            if (cur is not Dictionary<string, object?> d || !d.TryGetValue(part, out cur)) return null;
        }
        return cur;
    }

    public static double? Number(object? v) =>
        v is string s && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : null;

    public static bool? Bool(object? v) => v is string s ? s.ToLowerInvariant() switch
    {
        "true" or "yes" or "on" => true,
        "false" or "no" or "off" => false,
        _ => null,
    } : null;

    public static int[]? Ints(object? v) =>
        v is List<object?> l && l.All(x => Number(x) is not null) ? l.Select(x => (int)Number(x)!.Value).ToArray() : null;
}
