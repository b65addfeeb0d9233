using System.Text;
using System.Text.RegularExpressions;

namespace SdLora.Tests.Cli;

/// <summary>A shell command found in a Markdown file: where, and its text (continuations joined, comment removed).</summary>
public sealed record DocCommand(string File, int Line, string Text)
{
    public string[] Words => DocCommands.SplitWords(Text);
    public override string ToString() => $"{File}:{Line}: {Text}";
}

/// <summary>
/// Finds the commands a reader would copy from the docs: lines starting with <c>sdlora</c> or <c>dotnet</c> (an optional
/// <c>$ </c> prompt dropped) in fenced code blocks, with <c>\</c> continuations joined and <c># comments</c> removed, and
/// <c>`sdlora ...`</c> code spans in table rows.
/// </summary>
public static partial class DocCommands
{
    private static readonly string[] Programs = ["sdlora", "dotnet"];

    public static List<DocCommand> Extract(string markdown, string file)
    {
        var result = new List<DocCommand>();
        var lines = markdown.Replace("\r\n", "\n").Split('\n');
        string? fence = null;
        for (int i = 0; i < lines.Length; i++)
        {
            var line = lines[i];
            var trimmed = line.TrimStart();
            if (fence is null && (trimmed.StartsWith("```") || trimmed.StartsWith("~~~")))
            {
                fence = trimmed[..3];
                continue;
            }
            if (fence is not null)
            {
                if (trimmed.StartsWith(fence)) { fence = null; continue; }
                int start = i;
                var text = trimmed.StartsWith("$ ") ? trimmed[2..] : trimmed;
                while (text.EndsWith('\\') && i + 1 < lines.Length) text = text[..^1] + " " + lines[++i].Trim();
                text = StripComment(text).Trim();
                if (IsCommand(text)) result.Add(new DocCommand(file, start + 1, Collapse(text)));
                continue;
            }
            if (trimmed.StartsWith('|'))
                foreach (Match m in CodeSpan().Matches(trimmed))
                    if (m.Groups[1].Value.StartsWith("sdlora ", StringComparison.Ordinal))
                        result.Add(new DocCommand(file, i + 1, Collapse(m.Groups[1].Value)));
        }
        return result;
    }

    private static bool IsCommand(string text) => Programs.Any(p => text == p || text.StartsWith(p + " ", StringComparison.Ordinal));

    /// <summary>Removes a shell comment: a <c>#</c> that starts a word outside quotes.</summary>
    public static string StripComment(string text)
    {
        char quote = '\0';
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (quote != '\0') { if (c == quote) quote = '\0'; else if (c == '\\' && quote == '"') i++; continue; }
            if (c is '"' or '\'') quote = c;
            else if (c == '\\') i++;
            else if (c == '#' && (i == 0 || char.IsWhiteSpace(text[i - 1]))) return text[..i];
        }
        return text;
    }

    /// <summary>Splits a command into words as a POSIX shell does for the quoting the docs use: '...', "..." (with \" and \\), and \x.</summary>
    public static string[] SplitWords(string text)
    {
        var words = new List<string>();
        var word = new StringBuilder();
        bool inWord = false;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (char.IsWhiteSpace(c))
            {
                if (inWord) { words.Add(word.ToString()); word.Clear(); inWord = false; }
                continue;
            }
            inWord = true;
            if (c == '\'')
            {
                int end = text.IndexOf('\'', i + 1);
                if (end < 0) throw new FormatException($"unclosed ' in: {text}");
                word.Append(text, i + 1, end - i - 1);
                i = end;
            }
            else if (c == '"')
            {
                for (i++; i < text.Length && text[i] != '"'; i++)
                {
                    if (text[i] == '\\' && i + 1 < text.Length && text[i + 1] is '"' or '\\' or '$' or '`') i++;
                    word.Append(text[i]);
                }
                if (i >= text.Length) throw new FormatException($"unclosed \" in: {text}");
            }
            else if (c == '\\' && i + 1 < text.Length) word.Append(text[++i]);
            else word.Append(c);
        }
        if (inWord) words.Add(word.ToString());
        return words.ToArray();
    }

    /// <summary>Whitespace outside quotes collapsed to single spaces (so a command reads the same however it was wrapped).</summary>
    private static string Collapse(string text)
    {
        var sb = new StringBuilder();
        char quote = '\0';
        foreach (char c in text.Trim())
        {
            if (quote == '\0' && char.IsWhiteSpace(c))
            {
                if (sb.Length > 0 && sb[^1] != ' ') sb.Append(' ');
                continue;
            }
            if (quote == '\0' && c is '"' or '\'') quote = c;
            else if (c == quote) quote = '\0';
            sb.Append(c);
        }
        return sb.ToString();
    }

    [GeneratedRegex("`([^`]+)`")]
    private static partial Regex CodeSpan();
}
