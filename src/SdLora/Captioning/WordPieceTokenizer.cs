// Why we keep this (not Microsoft.ML.Tokenizers' BertTokenizer): its Decode misses all four BLIP caption fixtures, and its Encode drops unknown symbols and emoji where BERT emits [UNK] and does not split at tabs (docs/libraries.md).
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace SdLora.Captioning;

/// <summary>
/// BERT's WordPiece tokenizer for a <c>vocab.txt</c> (id = line index), as BLIP uses it: basic tokenization
/// (clean, CJK spacing, lower-case + strip accents, split on whitespace and punctuation), then greedy
/// longest-match-first WordPiece with <c>##</c> continuations. Ids at or past the vocab size are the tokens BLIP
/// adds (<c>[DEC]</c> = bos, <c>[ENC]</c>); decoding treats them as special.
/// </summary>
public sealed class WordPieceTokenizer
{
    private const int MaxCharsPerWord = 100;
    private readonly Dictionary<string, int> _ids;
    private readonly string[] _tokens;
    private readonly HashSet<int> _specialIds;
    private readonly string[] _specialTokens;

    public bool DoLowerCase { get; }
    public int VocabCount => _tokens.Length;
    public int PadId { get; }
    public int UnkId { get; }
    public int ClsId { get; }
    public int SepId { get; }
    public int MaskId { get; }

    public WordPieceTokenizer(IReadOnlyList<string> vocab, bool doLowerCase = true,
        string unk = "[UNK]", string sep = "[SEP]", string pad = "[PAD]", string cls = "[CLS]", string mask = "[MASK]")
    {
        _tokens = vocab.ToArray();
        _ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < _tokens.Length; i++) _ids.TryAdd(_tokens[i], i);
        DoLowerCase = doLowerCase;
        int Id(string t) => _ids.TryGetValue(t, out var id) ? id
            : throw new SdLoraException($"vocab.txt has no '{t}' token; this is not a BERT WordPiece vocabulary");
        UnkId = Id(unk); SepId = Id(sep); PadId = Id(pad); ClsId = Id(cls); MaskId = Id(mask);
        _specialTokens = [unk, sep, pad, cls, mask];
        _specialIds = [UnkId, SepId, PadId, ClsId, MaskId];
    }

    /// <summary>Reads <c>vocab.txt</c> and, when present, <c>tokenizer_config.json</c> (<c>do_lower_case</c>, special token names) from a model folder.</summary>
    public static WordPieceTokenizer FromFolder(string folder)
    {
        var vocabPath = Path.Combine(folder, "vocab.txt");
        if (!File.Exists(vocabPath)) throw new SdLoraException($"{vocabPath}: not found; a BLIP model folder needs the tokenizer's vocab.txt (bert-base-uncased)");
        var lines = File.ReadAllLines(vocabPath);
        // A trailing empty line is the file's last newline, not a token.
        var vocab = lines.Length > 0 && lines[^1].Length == 0 ? lines[..^1] : lines;
        bool lower = true;
        string unk = "[UNK]", sep = "[SEP]", pad = "[PAD]", cls = "[CLS]", mask = "[MASK]";
        var configPath = Path.Combine(folder, "tokenizer_config.json");
        if (File.Exists(configPath))
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(configPath));
                var root = doc.RootElement;
                if (root.TryGetProperty("do_lower_case", out var lc) && lc.ValueKind is JsonValueKind.True or JsonValueKind.False) lower = lc.GetBoolean();
                string Name(string key, string fallback) =>
                    root.TryGetProperty(key, out var p) ? p.ValueKind switch
                    {
                        JsonValueKind.String => p.GetString()!,
                        JsonValueKind.Object when p.TryGetProperty("content", out var c) => c.GetString() ?? fallback,
                        _ => fallback,
                    } : fallback;
                unk = Name("unk_token", unk); sep = Name("sep_token", sep); pad = Name("pad_token", pad);
                cls = Name("cls_token", cls); mask = Name("mask_token", mask);
            }
            catch (JsonException e)
            {
                throw new SdLoraException($"{configPath}: not valid JSON ({e.Message}); re-download it or delete it to use the BERT defaults");
            }
        }
        return new WordPieceTokenizer(vocab, lower, unk, sep, pad, cls, mask);
    }

    /// <summary><c>[CLS] tokens [SEP]</c> ids.</summary>
    public int[] Encode(string text)
    {
        var ids = new List<int> { ClsId };
        ids.AddRange(Tokenize(text).Select(t => _ids.TryGetValue(t, out var id) ? id : UnkId));
        ids.Add(SepId);
        return ids.ToArray();
    }

    public string TokenOf(int id) => id >= 0 && id < _tokens.Length ? _tokens[id] : id == _tokens.Length ? "[DEC]" : id == _tokens.Length + 1 ? "[ENC]" : "[UNK]";

    /// <summary>WordPiece tokens of <paramref name="text"/> (no <c>[CLS]</c>/<c>[SEP]</c>). Special-token strings in the text stay whole.</summary>
    public List<string> Tokenize(string text)
    {
        var result = new List<string>();
        foreach (var (segment, isSpecial) in SplitOnSpecialTokens(text))
        {
            if (isSpecial) { result.Add(segment); continue; }
            foreach (var word in BasicTokenize(segment)) WordPiece(word, result);
        }
        return result;
    }

    /// <summary>
    /// Ids to text as BertTokenizer decodes: skipped ids dropped, tokens joined with spaces, <c>" ##"</c> removed,
    /// then the clean-up of spaces before punctuation and contractions.
    /// </summary>
    public string Decode(IEnumerable<long> ids, bool skipSpecialTokens = true)
    {
        var parts = new List<string>();
        var current = new List<string>();
        void Flush() { if (current.Count > 0) { parts.Add(string.Join(" ", current).Replace(" ##", "").Trim()); current.Clear(); } }
        foreach (var raw in ids)
        {
            int id = (int)raw;
            bool added = id >= _tokens.Length; // [DEC], [ENC]: tokens BLIP adds after the vocab
            if (skipSpecialTokens && (added || _specialIds.Contains(id))) continue;
            if (added) { Flush(); parts.Add(TokenOf(id)); }
            else current.Add(_tokens[id]);
        }
        Flush();
        return CleanUp(string.Join(" ", parts));
    }

    private static string CleanUp(string s) => s
        .Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
        .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");

    private IEnumerable<(string, bool)> SplitOnSpecialTokens(string text)
    {
        int pos = 0;
        while (pos < text.Length)
        {
            int best = -1; string? found = null;
            foreach (var t in _specialTokens)
            {
                int i = text.IndexOf(t, pos, StringComparison.Ordinal);
                if (i >= 0 && (best < 0 || i < best)) { best = i; found = t; }
            }
            if (found is null) { yield return (text[pos..], false); yield break; }
            if (best > pos) yield return (text[pos..best], false);
            yield return (found, true);
            pos = best + found.Length;
        }
    }

    private IEnumerable<string> BasicTokenize(string text)
    {
        var cleaned = new StringBuilder(text.Length);
        foreach (var r in text.EnumerateRunes())
        {
            if (r.Value == 0 || r.Value == 0xFFFD || IsControl(r)) continue;
            if (IsWhitespace(r)) cleaned.Append(' ');
            else if (IsCjk(r.Value)) cleaned.Append(' ').Append(r.ToString()).Append(' ');
            else cleaned.Append(r.ToString());
        }
        foreach (var word in cleaned.ToString().Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            var w = word;
            if (DoLowerCase) w = StripAccents(w.ToLowerInvariant());
            // Every punctuation character becomes its own token.
            var piece = new StringBuilder();
            foreach (var r in w.EnumerateRunes())
            {
                if (IsPunctuation(r))
                {
                    if (piece.Length > 0) { yield return piece.ToString(); piece.Clear(); }
                    yield return r.ToString();
                }
                else piece.Append(r.ToString());
            }
            if (piece.Length > 0) yield return piece.ToString();
        }
    }

    private void WordPiece(string word, List<string> output)
    {
        var runes = word.EnumerateRunes().Select(r => r.ToString()).ToArray();
        if (runes.Length > MaxCharsPerWord) { output.Add(_tokens[UnkId]); return; }
        var pieces = new List<string>();
        int start = 0;
        while (start < runes.Length)
        {
            string? match = null;
            int end = runes.Length;
            for (; end > start; end--)
            {
                var sub = string.Concat(runes[start..end]);
                if (start > 0) sub = "##" + sub;
                if (_ids.ContainsKey(sub)) { match = sub; break; }
            }
            if (match is null) { output.Add(_tokens[UnkId]); return; }
            pieces.Add(match);
            start = end;
        }
        output.AddRange(pieces);
    }

    private static string StripAccents(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var r in s.Normalize(NormalizationForm.FormD).EnumerateRunes())
            if (Rune.GetUnicodeCategory(r) != UnicodeCategory.NonSpacingMark) sb.Append(r.ToString());
        return sb.ToString();
    }

    private static bool IsWhitespace(Rune r) =>
        r.Value is ' ' or '\t' or '\n' or '\r' || Rune.GetUnicodeCategory(r) == UnicodeCategory.SpaceSeparator;

    private static bool IsControl(Rune r)
    {
        if (r.Value is '\t' or '\n' or '\r') return false;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned;
    }

    private static bool IsPunctuation(Rune r)
    {
        int cp = r.Value;
        // ASCII symbols count as punctuation for BERT (e.g. $, ^, `), as do all Unicode P* categories.
        if (cp is >= 33 and <= 47 or >= 58 and <= 64 or >= 91 and <= 96 or >= 123 and <= 126) return true;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;
    }

    private static bool IsCjk(int cp) =>
        cp is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
            or >= 0x2B740 and <= 0x2B81F or >= 0x2B820 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;
}
