// Why we keep this (not Microsoft.ML.Tokenizers' BpeTokenizer): same ids, but twice as slow on everyday prompts and 0.25 s slower to load; CLIP's cleaning and word pattern have no library at all (docs/libraries.md).
using System.Collections.Concurrent;
using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.Json;

namespace SdLora.Text;

/// <summary>
/// The CLIP byte-level BPE tokenizer used by Stable Diffusion 1.x, producing the same ids as transformers'
/// <c>CLIPTokenizer</c> with ftfy installed (what SD pipelines and A1111 run with).
/// </summary>
/// <remarks>
/// Steps: split out literal special tokens, clean the text (<see cref="ClipTextCleaner"/>: ftfy fixes, whitespace,
/// lower-case), cut it into words with CLIP's pattern (specials, English contractions, letter runs, single digits,
/// runs of other symbols), map each word's UTF-8 bytes to printable characters, append <c>&lt;/w&gt;</c> to the last
/// one and merge pairs by rank.
/// </remarks>
public sealed class ClipTokenizer
{
    /// <summary><c>&lt;|startoftext|&gt;</c> in the CLIP vocabulary.</summary>
    public const int Bos = 49406;
    /// <summary><c>&lt;|endoftext|&gt;</c> in the CLIP vocabulary; SD1.x also pads with it.</summary>
    public const int Eos = 49407;

    public const string StartOfText = "<|startoftext|>";
    public const string EndOfText = "<|endoftext|>";
    private const string EndOfWord = "</w>";
    // CLIP and transformers both read this many merges (the file's first line is a header).
    private const int MergeCount = 49152 - 256 - 2;

    private readonly Dictionary<string, int> _ids;
    private readonly string[] _tokens;
    private readonly Dictionary<(string, string), int> _mergeRanks;
    private readonly ConcurrentDictionary<string, string[]> _bpeCache;
    // Words added for textual inversion (lower case) -> their ids after the vocabulary, longest first for matching.
    private readonly Dictionary<string, int> _added = new(StringComparer.Ordinal);
    private readonly string[] _addedByLength = [];

    private static readonly char[] ByteToChar = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByte =
        Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    private static readonly Lazy<ClipTokenizer> _default = new(LoadEmbedded);

    /// <summary>The tokenizer with OpenAI's CLIP vocabulary (shipped inside the library, MIT licence).</summary>
    public static ClipTokenizer Default => _default.Value;

    public int VocabSize => _tokens.Length;
    public int BosId { get; }
    public int EosId { get; }
    /// <summary>The id of <c>,&lt;/w&gt;</c> (A1111 prefers to start a new 75-token chunk after a comma), or -1.</summary>
    public int CommaId { get; }

    private ClipTokenizer(Dictionary<string, int> ids, IReadOnlyList<(string, string)> merges, string source)
    {
        _ids = ids;
        _bpeCache = new();
        int size = ids.Count == 0 ? 0 : ids.Values.Max() + 1;
        _tokens = new string[size];
        foreach (var (token, id) in ids) _tokens[id] = token;
        _mergeRanks = new Dictionary<(string, string), int>(merges.Count);
        for (int i = 0; i < merges.Count; i++) _mergeRanks.TryAdd(merges[i], i);
        BosId = ids.TryGetValue(StartOfText, out var bos) ? bos
            : throw new SdLoraException($"{source}: vocabulary has no '{StartOfText}' token; this is not a CLIP tokenizer");
        EosId = ids.TryGetValue(EndOfText, out var eos) ? eos
            : throw new SdLoraException($"{source}: vocabulary has no '{EndOfText}' token; this is not a CLIP tokenizer");
        CommaId = ids.TryGetValue("," + EndOfWord, out var comma) ? comma : -1;
    }

    // A copy of `source` with `words` appended after its vocabulary (and after words it already added).
    private ClipTokenizer(ClipTokenizer source, IReadOnlyList<string> words)
    {
        _ids = source._ids;
        _mergeRanks = source._mergeRanks;
        _bpeCache = source._bpeCache;
        BosId = source.BosId; EosId = source.EosId; CommaId = source.CommaId;
        foreach (var (w, id) in source._added) _added[w] = id;
        var tokens = new List<string>(source._tokens);
        foreach (var word in words)
        {
            var key = word.ToLowerInvariant();
            if (_added.ContainsKey(key)) throw new SdLoraException($"the word '{word}' was already added to the tokenizer; choose another token string");
            _added[key] = tokens.Count;
            tokens.Add(key);
        }
        _tokens = tokens.ToArray();
        _addedByLength = _added.Keys.OrderByDescending(k => k.Length).ThenBy(k => k, StringComparer.Ordinal).ToArray();
    }

    /// <summary>
    /// This tokenizer with <paramref name="words"/> added as new tokens (ids <see cref="VocabSize"/>, +1, ...), as
    /// transformers' <c>add_tokens</c> does for textual inversion: wherever one stands as a whole word (not inside a
    /// longer word or number; any case) it becomes its own id instead of being cut into BPE pieces. Longer words win
    /// (<c>sks1</c> over <c>sks</c>). The original tokenizer is unchanged.
    /// </summary>
    public ClipTokenizer WithAddedTokens(IReadOnlyList<string> words)
    {
        foreach (var w in words)
            if (string.IsNullOrWhiteSpace(w) || w.Any(char.IsWhiteSpace))
                throw new ArgumentException($"an added token must be one word (got '{w}')", nameof(words));
        return new ClipTokenizer(this, words);
    }

    /// <summary>
    /// Writes this tokenizer as transformers' <c>CLIPTokenizer</c> folder (<c>vocab.json</c>, <c>merges.txt</c>,
    /// <c>tokenizer_config.json</c>, <c>special_tokens_map.json</c>), as a diffusers model's <c>tokenizer/</c> holds it
    /// and <see cref="FromDiffusersFolder"/> reads it back. Words added with <see cref="WithAddedTokens"/> are not written
    /// (they belong to an embedding, not to the model).
    /// </summary>
    public void WriteDiffusersFolder(string dir, int maxLength = 77)
    {
        Directory.CreateDirectory(dir);
        var vocab = new StringBuilder("{");
        bool first = true;
        foreach (var (token, id) in _ids.OrderBy(kv => kv.Value))
        {
            if (!first) vocab.Append(',');
            vocab.Append(JsonSerializer.Serialize(token)).Append(':').Append(id);
            first = false;
        }
        IO.AtomicFile.WriteAllText(Path.Combine(dir, "vocab.json"), vocab.Append('}').ToString());
        var merges = new StringBuilder("#version: 0.2\n");
        foreach (var ((a, b), _) in _mergeRanks.OrderBy(kv => kv.Value)) merges.Append(a).Append(' ').Append(b).Append('\n');
        IO.AtomicFile.WriteAllText(Path.Combine(dir, "merges.txt"), merges.ToString());
        static string Special(string content) =>
            $"{{\"content\": {JsonSerializer.Serialize(content)}, \"lstrip\": false, \"normalized\": true, \"rstrip\": false, \"single_word\": false}}";
        IO.AtomicFile.WriteAllText(Path.Combine(dir, "special_tokens_map.json"),
            $"{{\"bos_token\": {Special(StartOfText)}, \"eos_token\": {Special(EndOfText)}, \"pad_token\": \"{EndOfText}\", \"unk_token\": {Special(EndOfText)}}}\n");
        IO.AtomicFile.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            $"{{\"bos_token\": {Special(StartOfText)}, \"clean_up_tokenization_spaces\": true, \"eos_token\": {Special(EndOfText)}, \"errors\": \"replace\", " +
            $"\"model_max_length\": {maxLength}, \"pad_token\": \"{EndOfText}\", \"tokenizer_class\": \"CLIPTokenizer\", \"unk_token\": {Special(EndOfText)}}}\n");
    }

    /// <summary>The ids of the words added with <see cref="WithAddedTokens"/>, by word (lower case).</summary>
    public IReadOnlyDictionary<string, int> AddedTokens => _added;

    private static ClipTokenizer LoadEmbedded()
    {
        const string name = "SdLora.Text.bpe_simple_vocab_16e6.txt.gz";
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"embedded resource {name} missing from the build");
        using var gz = new GZipStream(stream, CompressionMode.Decompress);
        using var reader = new StreamReader(gz, Encoding.UTF8);
        var merges = ReadMerges(reader, name);

        // CLIP's vocabulary: the 256 byte characters, the same with </w>, one token per merge, then the two specials.
        var ids = new Dictionary<string, int>(49408);
        var byteChars = ByteCharsInVocabOrder();
        foreach (var c in byteChars) ids.Add(c.ToString(), ids.Count);
        foreach (var c in byteChars) ids.Add(c + EndOfWord, ids.Count);
        foreach (var (a, b) in merges) ids.TryAdd(a + b, ids.Count);
        ids.Add(StartOfText, ids.Count);
        ids.Add(EndOfText, ids.Count);
        return new ClipTokenizer(ids, merges, name);
    }

    /// <summary>
    /// Reads a diffusers/transformers <c>tokenizer/</c> folder (<c>vocab.json</c> + <c>merges.txt</c>).
    /// </summary>
    public static ClipTokenizer FromDiffusersFolder(string tokenizerDir)
    {
        if (!Directory.Exists(tokenizerDir))
            throw new SdLoraException($"{tokenizerDir}: tokenizer folder not found; pass the model's 'tokenizer' folder (with vocab.json and merges.txt)");
        var vocabPath = Path.Combine(tokenizerDir, "vocab.json");
        var mergesPath = Path.Combine(tokenizerDir, "merges.txt");
        foreach (var p in new[] { vocabPath, mergesPath })
            if (!File.Exists(p))
                throw new SdLoraException($"{p}: file not found; a CLIP tokenizer folder needs vocab.json and merges.txt (re-download the model's tokenizer folder)");

        Dictionary<string, int> ids;
        try
        {
            ids = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath))
                ?? throw new JsonException("null");
        }
        catch (JsonException e)
        {
            throw new SdLoraException($"{vocabPath}: not a JSON object of token -> id ({e.Message.Split('\n')[0]}); re-download the tokenizer folder", e);
        }
        if (ids.Values.Any(v => v < 0 || v > 10_000_000))
            throw new SdLoraException($"{vocabPath}: token ids must be between 0 and 10,000,000; the file is damaged");

        using var reader = new StreamReader(mergesPath, Encoding.UTF8);
        var merges = ReadMerges(reader, mergesPath);
        return new ClipTokenizer(ids, merges, vocabPath);
    }

    private static List<(string, string)> ReadMerges(TextReader reader, string source)
    {
        var merges = new List<(string, string)>(MergeCount);
        reader.ReadLine(); // header line ("#version: 0.2" / "bpe_simple_vocab_16e6.txt#version: 0.2")
        int lineNo = 1;
        while (merges.Count < MergeCount && reader.ReadLine() is { } line)
        {
            lineNo++;
            if (line.Length == 0) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new SdLoraException($"{source}: line {lineNo} is not a BPE merge ('A B'): '{line}'; the merges file is damaged");
            merges.Add((parts[0], parts[1]));
        }
        if (merges.Count == 0)
            throw new SdLoraException($"{source}: no BPE merges found; the merges file is empty or damaged");
        return merges;
    }

    /// <summary>BPE ids of <paramref name="text"/>, without BOS/EOS and without truncation.</summary>
    public int[] Encode(string text) => Pieces(text).SelectMany(p => p.AddedId is { } id ? [id] : p.Tokens.Select(IdOf)).ToArray();

    /// <summary>The BPE token strings (byte characters, words ending in <c>&lt;/w&gt;</c>; added words as they are) of <paramref name="text"/>.</summary>
    public string[] Tokens(string text) => Pieces(text).SelectMany(p => p.Tokens).ToArray();

    private IEnumerable<(string[] Tokens, int? AddedId)> Pieces(string text)
    {
        foreach (var (piece, isSpecial) in SplitSpecialTokens(text))
        {
            if (isSpecial) { yield return ([piece], null); continue; }
            foreach (var (part, addedId) in SplitAddedTokens(piece))
            {
                if (addedId is { } id) { yield return ([_tokens[id]], id); continue; }
                foreach (var word in Words(ClipTextCleaner.Clean(part)))
                    yield return (word is StartOfText or EndOfText ? [word] : Bpe(word), null);
            }
        }
    }

    // Added words standing alone (no letter or digit right before or after), longest first.
    private IEnumerable<(string Part, int? AddedId)> SplitAddedTokens(string text)
    {
        if (_added.Count == 0) { yield return (text, null); yield break; }
        int pos = 0, from = 0;
        while (pos < text.Length)
        {
            string? hit = null;
            if (pos == 0 || !char.IsLetterOrDigit(text[pos - 1]))
                foreach (var w in _addedByLength)
                    if (string.Compare(text, pos, w, 0, w.Length, StringComparison.OrdinalIgnoreCase) == 0
                        && (pos + w.Length == text.Length || !char.IsLetterOrDigit(text[pos + w.Length])))
                    {
                        hit = w;
                        break;
                    }
            if (hit is null) { pos++; continue; }
            if (pos > from) yield return (text[from..pos], null);
            yield return (hit, _added[hit]);
            pos += hit.Length;
            from = pos;
        }
        if (from < text.Length) yield return (text[from..], null);
    }

    /// <summary>
    /// Ids as SD1.x feeds the text encoder: BOS, the first <c>maxLength - 2</c> BPE ids, EOS, then EOS padding up to
    /// <paramref name="maxLength"/>.
    /// </summary>
    public long[] EncodeForModel(string text, int maxLength = 77)
    {
        if (maxLength < 2) throw new ArgumentOutOfRangeException(nameof(maxLength), "needs room for BOS and EOS");
        var ids = Encode(text);
        var result = new long[maxLength];
        Array.Fill(result, (long)EosId);
        result[0] = BosId;
        int n = Math.Min(ids.Length, maxLength - 2);
        for (int i = 0; i < n; i++) result[i + 1] = ids[i];
        return result;
    }

    /// <summary>The id of a BPE token string; unknown tokens map to <c>&lt;|endoftext|&gt;</c> as in transformers.</summary>
    public int IdOf(string token) => _ids.TryGetValue(token, out var id) ? id : EosId;

    /// <summary>The token string of an id.</summary>
    public string TokenOf(int id) => id >= 0 && id < _tokens.Length && _tokens[id] is { } t ? t
        : throw new ArgumentOutOfRangeException(nameof(id), $"token id {id} is not in the vocabulary");

    /// <summary>Text back from ids (lower-cased and cleaned as it was tokenized); special tokens are kept literally.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        var bytes = new List<byte>();
        // An added word is a whole word: it ends like a vocabulary word that carries </w>.
        string Text(int id) => _added.Count > 0 && _added.ContainsValue(id) ? TokenOf(id) + EndOfWord : TokenOf(id);
        foreach (var ch in string.Concat(ids.Select(Text)).Replace(EndOfWord, " "))
        {
            if (CharToByte.TryGetValue(ch, out var b)) bytes.Add(b);
            else bytes.AddRange(Encoding.UTF8.GetBytes(ch.ToString()));
        }
        return Encoding.UTF8.GetString(bytes.ToArray()).Trim();
    }

    // transformers splits literal special tokens out of the raw text before any cleaning.
    private static IEnumerable<(string Piece, bool IsSpecial)> SplitSpecialTokens(string text)
    {
        int pos = 0;
        while (pos < text.Length)
        {
            int s = text.IndexOf(StartOfText, pos, StringComparison.Ordinal);
            int e = text.IndexOf(EndOfText, pos, StringComparison.Ordinal);
            int next = s < 0 ? e : e < 0 ? s : Math.Min(s, e);
            if (next < 0) { yield return (text[pos..], false); yield break; }
            if (next > pos) yield return (text[pos..next], false);
            var special = next == s ? StartOfText : EndOfText;
            yield return (special, true);
            pos = next + special.Length;
        }
    }

    /// <summary>
    /// CLIP's word pattern, as a scanner over code points:
    /// <c>&lt;|startoftext|&gt;|&lt;|endoftext|&gt;|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+</c>.
    /// The alternatives are tried only where a match starts, so a symbol run swallows a following <c>'s</c>.
    /// </summary>
    internal static IEnumerable<string> Words(string text)
    {
        var runes = text.EnumerateRunes().ToArray();
        int i = 0;
        while (i < runes.Length)
        {
            var r = runes[i];
            if (ClipTextCleaner.IsPythonSpace(r)) { i++; continue; }
            string rest = RunesToString(runes, i, Math.Min(runes.Length - i, EndOfText.Length + 2));
            if (rest.StartsWith(StartOfText, StringComparison.OrdinalIgnoreCase)) { yield return StartOfText; i += StartOfText.Length; continue; }
            if (rest.StartsWith(EndOfText, StringComparison.OrdinalIgnoreCase)) { yield return EndOfText; i += EndOfText.Length; continue; }
            if (r.Value == '\'' && Contraction(rest) is { } contraction) { yield return contraction; i += contraction.Length; continue; }

            int start = i;
            if (Rune.IsLetter(r))
                while (i < runes.Length && Rune.IsLetter(runes[i])) i++;
            else if (Rune.IsNumber(r))
                i++;
            else
                while (i < runes.Length && !Rune.IsLetter(runes[i]) && !Rune.IsNumber(runes[i]) && !ClipTextCleaner.IsPythonSpace(runes[i])) i++;
            yield return RunesToString(runes, start, i - start);
        }
    }

    private static string? Contraction(string rest)
    {
        foreach (var c in new[] { "'s", "'t", "'re", "'ve", "'m", "'ll", "'d" })
            if (rest.StartsWith(c, StringComparison.OrdinalIgnoreCase)) return rest[..c.Length];
        return null;
    }

    private static string RunesToString(Rune[] runes, int start, int count)
    {
        var sb = new StringBuilder(count);
        for (int k = start; k < start + count; k++) sb.Append(runes[k].ToString());
        return sb.ToString();
    }

    private string[] Bpe(string word)
    {
        if (_bpeCache.TryGetValue(word, out var cached)) return cached;
        var bytes = Encoding.UTF8.GetBytes(word);
        var symbols = new List<string>(bytes.Length);
        foreach (var b in bytes) symbols.Add(ByteToChar[b].ToString());
        symbols[^1] += EndOfWord;

        while (symbols.Count > 1)
        {
            int bestRank = int.MaxValue;
            (string, string) best = default;
            for (int k = 0; k + 1 < symbols.Count; k++)
                if (_mergeRanks.TryGetValue((symbols[k], symbols[k + 1]), out var rank) && rank < bestRank)
                {
                    bestRank = rank;
                    best = (symbols[k], symbols[k + 1]);
                }
            if (bestRank == int.MaxValue) break;

            var merged = new List<string>(symbols.Count);
            for (int k = 0; k < symbols.Count; k++)
            {
                if (k + 1 < symbols.Count && symbols[k] == best.Item1 && symbols[k + 1] == best.Item2)
                {
                    merged.Add(best.Item1 + best.Item2);
                    k++;
                }
                else merged.Add(symbols[k]);
            }
            symbols = merged;
        }
        var result = symbols.ToArray();
        if (_bpeCache.Count < 100_000) _bpeCache.TryAdd(word, result);
        return result;
    }

    // GPT-2/CLIP byte alphabet: printable Latin-1 bytes stand for themselves, the others get the code points from 256 on.
    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
            map[b] = IsPrintableByte(b) ? (char)b : (char)next++;
        return map;
    }

    private static bool IsPrintableByte(int b) => b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;

    // CLIP lists the printable bytes first, then the remapped ones, each group in byte order.
    private static IEnumerable<char> ByteCharsInVocabOrder() =>
        Enumerable.Range(0, 256).Where(IsPrintableByte).Concat(Enumerable.Range(0, 256).Where(b => !IsPrintableByte(b))).Select(b => ByteToChar[b]);
}
