using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;

namespace SdLora.Text;

/// <summary>
/// The text clean-up that transformers' CLIPTokenizer applies before BPE when ftfy is installed (the setup every
/// SD1.x pipeline runs with): ftfy's <c>fix_text</c> with its default settings except mojibake repair, then
/// whitespace runs to one space, trim, and Python's <c>str.lower()</c>.
/// </summary>
/// <remarks>
/// The ftfy steps, in ftfy 6.1's order and repeated until the text stops changing: HTML entities (only while no
/// <c>&lt;</c> has been seen, as ftfy's "auto" mode), C1 controls read as Windows-1252, Latin ligatures and
/// digraphs split, half/full-width forms to normal width, curly quotes to ASCII, line breaks to <c>\n</c>, lone
/// surrogates to U+FFFD, ANSI terminal escapes and control characters removed, NFC.
/// Not done: ftfy's mojibake detection (<c>fix_encoding</c>), which needs its statistical heuristics; it only
/// changes text that is already garbled (like <c>cafÃ©</c>).
/// </remarks>
internal static class ClipTextCleaner
{
    public static string Clean(string text) => PythonLower(CollapseWhitespace(FixText(text)));

    // ---- ftfy fix_text ----

    public static string FixText(string text)
    {
        var output = new StringBuilder(text.Length);
        bool unescapeHtml = true;
        int pos = 0;
        while (pos < text.Length)
        {
            int lineEnd = text.IndexOf('\n', pos);
            int end = lineEnd < 0 ? text.Length : lineEnd + 1;
            var segment = text[pos..end];
            // ftfy's "auto" mode: once a segment contains '<' the text may be HTML, so entities stay as they are.
            if (segment.Contains('<')) unescapeHtml = false;
            output.Append(FixSegment(segment, unescapeHtml));
            pos = end;
        }
        return output.ToString();
    }

    private static string FixSegment(string text, bool unescapeHtml)
    {
        for (int round = 0; round < 100; round++)
        {
            var before = text;
            if (unescapeHtml) text = UnescapeHtml(text);
            text = FixC1Controls(text);
            text = MapChars(text, LatinLigature);
            text = MapChars(text, NormalWidth);
            text = UncurlQuotes(text);
            text = FixLineBreaks(text);
            text = FixSurrogates(text);
            text = AnsiEscape.Replace(text, "");
            text = RemoveControlChars(text);
            text = Nfc(text);
            if (text == before) break;
        }
        return text;
    }

    private static string Nfc(string text)
    {
        try { return text.Normalize(NormalizationForm.FormC); }
        catch (ArgumentException) { return text; } // invalid code points: leave as they are
    }

    private static readonly Regex HtmlEntity = new("&#?[0-9A-Za-z]{1,24};", RegexOptions.CultureInvariant);
    private static readonly Regex DecimalCharRef = new("^&#([0-9]+);$", RegexOptions.CultureInvariant);
    private static readonly Regex HexCharRef = new("^&#[xX]([0-9a-fA-F]+);$", RegexOptions.CultureInvariant);
    private static readonly Regex AnsiEscape = new("\u001b\\[(?:[0-9]|;)*[a-zA-Z]", RegexOptions.CultureInvariant);

    private static readonly Lazy<Dictionary<string, string>> NamedEntities = new(LoadEntities);

    private static Dictionary<string, string> LoadEntities()
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("SdLora.Text.HtmlEntities.txt")
            ?? throw new InvalidOperationException("embedded resource SdLora.Text.HtmlEntities.txt missing from the build");
        using var reader = new StreamReader(stream);
        while (reader.ReadLine() is { } line)
        {
            if (line.Length == 0 || line[0] == '#') continue;
            int tab = line.IndexOf('\t');
            var sb = new StringBuilder();
            foreach (var hex in line[(tab + 1)..].Split(' '))
                sb.Append(char.ConvertFromUtf32(int.Parse(hex, NumberStyles.HexNumber, CultureInfo.InvariantCulture)));
            map["&" + line[..tab] + ";"] = sb.ToString();
        }
        return map;
    }

    private static string UnescapeHtml(string text)
    {
        if (!text.Contains('&')) return text;
        return HtmlEntity.Replace(text, m =>
        {
            var entity = m.Value;
            if (NamedEntities.Value.TryGetValue(entity, out var named)) return named;
            var dec = DecimalCharRef.Match(entity);
            var hex = HexCharRef.Match(entity);
            var decoded = dec.Success ? CharRef(dec.Groups[1].Value, 10) : hex.Success ? CharRef(hex.Groups[1].Value, 16) : null;
            // ftfy keeps the entity when the decoded text still holds a ';' (as "&#59;" does).
            return decoded is null || decoded.Contains(';') ? entity : decoded;
        });
    }

    /// <summary>A numeric character reference decoded as Python's html.unescape does (HTML5 rules).</summary>
    private static string? CharRef(string digits, int radix)
    {
        long value = 0;
        foreach (char c in digits)
        {
            value = value * radix + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
            if (value > 0x10FFFF) return "\uFFFD";
        }
        if (value == 0) return "\uFFFD";
        if (value == 0x0D) return "\r";
        if (value is >= 0x80 and <= 0x9F) return ((char)Windows1252[value - 0x80]).ToString();
        if (value is >= 0xD800 and <= 0xDFFF) return "\uFFFD";
        if (value is >= 0x01 and <= 0x08 or 0x0B or >= 0x0E and <= 0x1F or 0x7F or >= 0xFDD0 and <= 0xFDEF
            || (value & 0xFFFE) == 0xFFFE)
            return "";
        return char.ConvertFromUtf32((int)value);
    }

    /// <summary>Bytes 0x80-0x9F decoded as Windows-1252; the five bytes it leaves undefined map to themselves (ftfy's "sloppy" codec).</summary>
    private static readonly ushort[] Windows1252 =
    [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
        0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
    ];

    private static string FixC1Controls(string text)
    {
        if (!text.Any(c => c is >= '\u0080' and <= '\u009F')) return text;
        var chars = text.ToCharArray();
        for (int i = 0; i < chars.Length; i++)
            if (chars[i] is >= '\u0080' and <= '\u009F') chars[i] = (char)Windows1252[chars[i] - 0x80];
        return new string(chars);
    }

    private static string? LatinLigature(char c) => c switch
    {
        'Ĳ' => "IJ", 'ĳ' => "ij", 'ŉ' => "ʼn",
        'Ǳ' => "DZ", 'ǲ' => "Dz", 'ǳ' => "dz", 'Ǆ' => "DŽ", 'ǅ' => "Dž", 'ǆ' => "dž",
        'Ǉ' => "LJ", 'ǈ' => "Lj", 'ǉ' => "lj", 'Ǌ' => "NJ", 'ǋ' => "Nj", 'ǌ' => "nj",
        'ﬀ' => "ff", 'ﬁ' => "fi", 'ﬂ' => "fl", 'ﬃ' => "ffi", 'ﬄ' => "ffl", 'ﬅ' => "ſt", 'ﬆ' => "st",
        _ => null,
    };

    /// <summary>U+FF01..U+FFEF (half- and full-width forms) to their NFKC form; U+3000 ideographic space to a space.</summary>
    private static readonly Lazy<string?[]> WidthMap = new(() =>
    {
        var map = new string?[0xFFF0 - 0xFF01];
        for (int i = 0; i < map.Length; i++)
        {
            var c = ((char)(0xFF01 + i)).ToString();
            string alt;
            try { alt = c.Normalize(NormalizationForm.FormKC); } catch (ArgumentException) { continue; }
            if (alt != c) map[i] = alt;
        }
        return map;
    });

    private static string? NormalWidth(char c) =>
        c == '\u3000' ? " " : c is >= '\uFF01' and < '\uFFF0' ? WidthMap.Value[c - 0xFF01] : null;

    private static string MapChars(string text, Func<char, string?> map)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            var replacement = map(text[i]);
            if (replacement is null) { sb?.Append(text[i]); continue; }
            sb ??= new StringBuilder(text.Length + 8).Append(text, 0, i);
            sb.Append(replacement);
        }
        return sb?.ToString() ?? text;
    }

    private static string UncurlQuotes(string text) => MapChars(text, c => c switch
    {
        '\u02BC' or >= '\u2018' and <= '\u201B' => "'",
        >= '\u201C' and <= '\u201F' => "\"",
        _ => null,
    });

    private static string FixLineBreaks(string text) =>
        text.Replace("\r\n", "\n").Replace('\r', '\n').Replace('\u2028', '\n').Replace('\u2029', '\n').Replace('\u0085', '\n');

    private static string FixSurrogates(string text)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            bool paired = char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]);
            if (paired) { sb?.Append(c).Append(text[i + 1]); i++; continue; }
            if (!char.IsSurrogate(c)) { sb?.Append(c); continue; }
            sb ??= new StringBuilder(text.Length).Append(text, 0, i);
            sb.Append('\uFFFD');
        }
        return sb?.ToString() ?? text;
    }

    private static bool IsRemovedControl(char c) =>
        c is <= '\u0008' or '\u000B' or >= '\u000E' and <= '\u001F' or '\u007F'
            or >= '\u206A' and <= '\u206F' or '\uFEFF' or >= '\uFFF9' and <= '\uFFFC';

    private static string RemoveControlChars(string text) => MapChars(text, c => IsRemovedControl(c) ? "" : null);

    // ---- transformers' whitespace_clean and Python's str.lower() ----

    /// <summary>Python's <c>str.isspace()</c>: .NET's white space plus the information separators U+001C..U+001F.</summary>
    public static bool IsPythonSpace(Rune r) => Rune.IsWhiteSpace(r) || r.Value is >= 0x1C and <= 0x1F;

    /// <summary><c>re.sub(r"\s+", " ", text).strip()</c></summary>
    public static string CollapseWhitespace(string text)
    {
        var sb = new StringBuilder(text.Length);
        bool pendingSpace = false;
        foreach (var r in text.EnumerateRunes())
        {
            if (IsPythonSpace(r)) { pendingSpace = sb.Length > 0; continue; }
            if (pendingSpace) { sb.Append(' '); pendingSpace = false; }
            sb.Append(r.ToString());
        }
        return sb.ToString();
    }

    /// <summary>
    /// Python's <c>str.lower()</c>: the simple lower-case mapping, plus the two full mappings that differ from it:
    /// U+0130 (İ) becomes "i̇" (i + combining dot above) and a final capital sigma becomes ς.
    /// </summary>
    public static string PythonLower(string text)
    {
        var runes = text.EnumerateRunes().ToArray();
        var sb = new StringBuilder(text.Length);
        for (int i = 0; i < runes.Length; i++)
        {
            var r = runes[i];
            if (r.Value == 0x130) sb.Append("i\u0307");
            else if (r.Value == 0x3A3) sb.Append(IsFinalSigma(runes, i) ? 'ς' : 'σ');
            else sb.Append(Rune.ToLowerInvariant(r).ToString());
        }
        return sb.ToString();
    }

    // Unicode's Final_Sigma condition: a cased letter before (skipping case-ignorables) and none after.
    private static bool IsFinalSigma(Rune[] runes, int at)
    {
        bool before = false;
        for (int j = at - 1; j >= 0; j--)
        {
            if (IsCaseIgnorable(runes[j])) continue;
            before = IsCased(runes[j]);
            break;
        }
        if (!before) return false;
        for (int j = at + 1; j < runes.Length; j++)
        {
            if (IsCaseIgnorable(runes[j])) continue;
            return !IsCased(runes[j]);
        }
        return true;
    }

    private static bool IsCased(Rune r) => Rune.GetUnicodeCategory(r) is UnicodeCategory.UppercaseLetter
        or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter;

    private static bool IsCaseIgnorable(Rune r) => r.Value is '\'' or '.' or ':' or '^' or '`' or 0xB7 or 0x2019
        || Rune.GetUnicodeCategory(r) is UnicodeCategory.NonSpacingMark or UnicodeCategory.EnclosingMark
            or UnicodeCategory.Format or UnicodeCategory.ModifierLetter or UnicodeCategory.ModifierSymbol;
}
