using System.Security.Cryptography;
using SdLora.IO;
using SdLora.IO.Pickle;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Text;

/// <summary>
/// A textual-inversion embedding: <see cref="Vectors"/> <c>[n, dim]</c> (fp32) that stand in for a word in prompts.
/// Read from every format AUTOMATIC1111 reads for SD1.x: kohya/sdlora safetensors (<c>emb_params</c>), diffusers'
/// <c>learned_embeds</c> (one tensor named after the token, <c>.safetensors</c> or <c>.bin</c>) and A1111's own
/// <c>.pt</c> (<c>string_to_param {'*': tensor}</c>, read through the restricted unpickler). Written as kohya does:
/// <c>emb_params</c> in a safetensors file.
/// </summary>
public sealed class TextualInversionEmbedding : IDisposable
{
    /// <summary>The tensor name kohya's trainer writes and A1111 reads (as its single tensor).</summary>
    public const string KohyaTensorName = "emb_params";

    /// <summary>The word that calls it up in a prompt: the file name without extension (A1111's rule).</summary>
    public string Name { get; }
    /// <summary>The file it came from, or null for one held in memory (a training run's current vectors).</summary>
    public string? Path { get; }
    /// <summary><c>[vectors, dim]</c>, fp32, on the CPU.</summary>
    public Tensor Vectors { get; }
    public int VectorCount => (int)Vectors.shape[0];
    public int Dimension => (int)Vectors.shape[1];
    /// <summary>A1111's "TI hashes" value: the first 12 hex digits of the file's SHA-256 (set for files, or given).</summary>
    public string? ShortHash { get; }

    public TextualInversionEmbedding(string name, Tensor vectors, string? path = null, string? shortHash = null)
    {
        if (vectors.dim() != 2 || vectors.shape[0] < 1)
            throw new ArgumentException($"embedding vectors must be [n, dim] with n >= 1, got [{string.Join(",", vectors.shape)}]", nameof(vectors));
        Name = name;
        Vectors = vectors.detach().to(ScalarType.Float32).cpu().clone().DetachFromDisposeScope();
        Path = path;
        ShortHash = shortHash ?? (path is not null ? FileShortHash(path) : null);
    }

    /// <summary>File types A1111 loads as embeddings (images with embedded data are not supported).</summary>
    public static readonly string[] Extensions = [".safetensors", ".pt", ".bin"];

    /// <summary>
    /// Reads an embedding file. Formats that are not a single SD1.x-style embedding (SDXL's <c>clip_l</c>/<c>clip_g</c>
    /// pair, several terms, no tensor at all) are refused with one line naming the file.
    /// </summary>
    public static TextualInversionEmbedding Read(string path, string? name = null)
    {
        name ??= System.IO.Path.GetFileNameWithoutExtension(path);
        if (!File.Exists(path)) throw new SdLoraException($"embedding {path}: file not found");
        using var scope = torch.NewDisposeScope();
        var ext = System.IO.Path.GetExtension(path).ToLowerInvariant();
        Tensor vectors = ext == ".safetensors" ? FromSafetensors(path) : FromPickle(path);
        if (vectors.dim() == 1) vectors = vectors.unsqueeze(0);
        if (vectors.dim() != 2)
            throw new SdLoraException($"embedding {path}: its tensor has shape [{string.Join(",", vectors.shape)}], not [vectors, dim]; it is not a textual-inversion embedding sdlora can use");
        return new TextualInversionEmbedding(name, vectors, path);
    }

    private static Tensor FromSafetensors(string path)
    {
        SafetensorsFile f;
        try { f = SafetensorsFile.Open(path); }
        catch (SdLoraException e) { throw AsEmbeddingError(e); }
        using (f)
        {
            var names = f.Keys.ToList();
            if (names.Contains("clip_l") && names.Contains("clip_g")) throw NotSd1(path, "an SDXL embedding (clip_l + clip_g)");
            var key = names.Contains(KohyaTensorName) ? KohyaTensorName
                : names.Count == 1 ? names[0]
                : throw Unknown(path, $"{names.Count} tensors ({string.Join(", ", names.Take(4))}) and no {KohyaTensorName}");
            return f.Load(key, ScalarType.Float32);
        }
    }

    private static Tensor FromPickle(string path)
    {
        TorchCheckpoint opened;
        try { opened = TorchCheckpoint.Open(path); }
        catch (SdLoraException e) { throw AsEmbeddingError(e); }
        using var ckpt = opened;
        if (ckpt.Root is not PickleDict root) throw Unknown(path, "its pickle is not a dict");
        if (root.TryGet("string_to_param", out var param))
        {
            // A1111: {'*': tensor}; older files pickled a ParameterDict, whose entries sit in its _parameters.
            var dict = param switch
            {
                PickleDict d => d,
                PickleObject { State: PickleDict state } when state.TryGet("_parameters", out var p) && p is PickleDict inner => inner,
                _ => throw Unknown(path, "string_to_param is neither a dict nor a ParameterDict"),
            };
            var refs = dict.Items.Where(kv => kv.Value is TensorRef).ToList();
            if (refs.Count != 1) throw Unknown(path, $"string_to_param holds {refs.Count} tensors; an embedding has one");
            return ckpt.Load((TensorRef)refs[0].Value!, $"string_to_param[{refs[0].Key}]", ScalarType.Float32);
        }
        if (ckpt.Keys.Contains("clip_l") && ckpt.Keys.Contains("clip_g")) throw NotSd1(path, "an SDXL embedding (clip_l + clip_g)");
        var keys = ckpt.Keys.ToList();
        if (keys.Contains(KohyaTensorName)) return ckpt.Load(KohyaTensorName, ScalarType.Float32);
        if (keys.Count == 1) return ckpt.Load(keys[0], ScalarType.Float32); // diffusers' learned_embeds.bin: {token: tensor}
        throw Unknown(path, keys.Count == 0 ? "it holds no tensor" : $"it holds {keys.Count} tensors ({string.Join(", ", keys.Take(4))})");
    }

    // The file readers' messages start with the path already ("PATH: what is wrong; the fix"): say it is an embedding.
    private static SdLoraException AsEmbeddingError(SdLoraException e) => new($"embedding {e.Message}", e);

    private static SdLoraException Unknown(string path, string why) =>
        new($"embedding {path}: not a textual-inversion embedding sdlora can read ({why}); use an A1111 .pt or a safetensors file with emb_params");

    private static SdLoraException NotSd1(string path, string what) =>
        new($"embedding {path}: is {what}; sdlora supports Stable Diffusion 1.x embeddings only");

    /// <summary>
    /// Refuses an embedding whose vectors do not fit the text encoder: <paramref name="dimension"/> 768 for SD1.x, 1024
    /// means an SD2.x embedding.
    /// </summary>
    public void CheckDimension(int dimension)
    {
        if (Dimension == dimension) return;
        string what = Dimension switch { 1024 => " (an SD2.x embedding)", 1280 or 2048 => " (an SDXL embedding)", 768 => " (an SD1.x embedding)", _ => "" };
        throw new SdLoraException($"embedding {Path ?? Name}: its vectors are {Dimension} wide{what}, but this model's text encoder takes {dimension}; " +
            "use an embedding trained for this model family");
    }

    /// <summary>
    /// Writes <paramref name="vectors"/> <c>[n, dim]</c> as kohya's trainer does: one tensor <c>emb_params</c> in
    /// <paramref name="dtype"/>, with <paramref name="metadata"/>; atomically.
    /// </summary>
    public static void Write(string path, Tensor vectors, IReadOnlyDictionary<string, string> metadata, ScalarType dtype = ScalarType.Float32)
    {
        using var scope = torch.NewDisposeScope();
        Safetensors.Save(path, [new KeyValuePair<string, Tensor>(KohyaTensorName, vectors.detach().to(dtype).cpu().contiguous())], metadata);
    }

    /// <summary>First 12 hex digits of the SHA-256 of the file (A1111's embedding short hash).</summary>
    public static string FileShortHash(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(s))[..12];
    }

    public void Dispose() => Vectors.Dispose();
}

/// <summary>
/// The embeddings a prompt may call up: the files of a folder (A1111's <c>embeddings</c> folder; sub-folders too) plus
/// any held in memory, by name. Files are read only when a prompt uses their name.
/// </summary>
public sealed class EmbeddingLibrary : IDisposable
{
    private readonly Dictionary<string, string> _files = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<string, TextualInversionEmbedding> _loaded = new(StringComparer.OrdinalIgnoreCase);
    private readonly HashSet<string> _owned = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>No embeddings.</summary>
    public static EmbeddingLibrary Empty => new(null, []);

    /// <param name="directory">Folder of embedding files, or null; a folder that does not exist holds none.</param>
    /// <param name="inMemory">Embeddings held by the caller (not disposed here); they win over files of the same name.</param>
    public EmbeddingLibrary(string? directory, IEnumerable<TextualInversionEmbedding>? inMemory = null)
    {
        if (directory is not null && Directory.Exists(directory))
            foreach (var f in Directory.EnumerateFiles(directory, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
                if (TextualInversionEmbedding.Extensions.Contains(System.IO.Path.GetExtension(f).ToLowerInvariant()))
                    _files.TryAdd(System.IO.Path.GetFileNameWithoutExtension(f), f);
        foreach (var e in inMemory ?? []) _loaded[e.Name] = e;
    }

    /// <summary>Every name a prompt can use.</summary>
    public IEnumerable<string> Names => _files.Keys.Concat(_loaded.Keys).Distinct(StringComparer.OrdinalIgnoreCase);

    /// <summary>The embedding called <paramref name="name"/>, read on first use.</summary>
    public TextualInversionEmbedding Get(string name)
    {
        if (_loaded.TryGetValue(name, out var e)) return e;
        var path = _files.TryGetValue(name, out var p) ? p : throw new KeyNotFoundException($"no embedding called {name}");
        e = TextualInversionEmbedding.Read(path);
        _loaded[name] = e;
        _owned.Add(name);
        return e;
    }

    public void Dispose()
    {
        foreach (var n in _owned) _loaded[n].Dispose();
        _owned.Clear();
        _loaded.Clear();
    }
}

/// <summary>
/// The embeddings one prompt encoding uses, A1111-style: wherever the tokens of an embedding's name appear in the
/// prompt (so, as a word or words), they are replaced by the embedding's vectors; each used embedding gets token ids
/// after the vocabulary (<see cref="FirstId"/> on), whose rows the text encoder takes from <see cref="Rows"/>.
/// </summary>
public sealed class PromptEmbeddings
{
    private readonly EmbeddingLibrary _library;
    private readonly ClipTokenizer _tokenizer;
    private readonly int? _dimension;
    private Dictionary<int, List<(int[] NameIds, string Name)>>? _byFirstId;
    private readonly List<(TextualInversionEmbedding Embedding, int FirstId)> _used = [];

    /// <param name="firstId">The first free token id (the text encoder's vocabulary size).</param>
    /// <param name="dimension">The text encoder's width, to refuse embeddings of other model families; null skips the check.</param>
    public PromptEmbeddings(EmbeddingLibrary library, ClipTokenizer tokenizer, int firstId, int? dimension)
    {
        _library = library; _tokenizer = tokenizer; FirstId = firstId; _dimension = dimension;
    }

    public int FirstId { get; }

    /// <summary>The embeddings used so far, in order of first use.</summary>
    public IReadOnlyList<TextualInversionEmbedding> Used => _used.Select(u => u.Embedding).ToList();

    /// <summary>A1111's <c>TI hashes</c>: name -> short hash of each used embedding that has one.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Hashes =>
        _used.Where(u => u.Embedding.ShortHash is not null).Select(u => new KeyValuePair<string, string>(u.Embedding.Name, u.Embedding.ShortHash!)).ToList();

    /// <summary>The added rows <c>[total vectors, dim]</c> for the ids handed out, or null when none was used.</summary>
    public Tensor? Rows() => _used.Count == 0 ? null : torch.cat(_used.Select(u => u.Embedding.Vectors).ToList(), 0);

    /// <summary>What an id stands for: a vocabulary token, or <c>name[i]</c> for vector i of an embedding.</summary>
    public string TokenOf(int id)
    {
        foreach (var (e, first) in _used)
            if (id >= first && id < first + e.VectorCount) return e.VectorCount == 1 ? e.Name : $"{e.Name}[{id - first}]";
        return _tokenizer.TokenOf(id);
    }

    /// <summary>
    /// When an embedding's name starts at <paramref name="at"/> in <paramref name="ids"/> (longest name first, as A1111
    /// matches), the ids of its vectors and how many prompt tokens its name took.
    /// </summary>
    public bool TryMatch(IReadOnlyList<int> ids, int at, out int nameLength, out int[] vectorIds)
    {
        nameLength = 0;
        vectorIds = [];
        _byFirstId ??= Index();
        if (!_byFirstId.TryGetValue(ids[at], out var candidates)) return false;
        foreach (var (nameIds, name) in candidates)
        {
            if (at + nameIds.Length > ids.Count) continue;
            bool same = true;
            for (int k = 0; k < nameIds.Length && same; k++) same = ids[at + k] == nameIds[k];
            if (!same) continue;
            int first = Use(name, out int count);
            nameLength = nameIds.Length;
            vectorIds = Enumerable.Range(first, count).ToArray();
            return true;
        }
        return false;
    }

    private Dictionary<int, List<(int[], string)>> Index()
    {
        var index = new Dictionary<int, List<(int[], string)>>();
        foreach (var name in _library.Names)
        {
            var ids = _tokenizer.Encode(name);
            if (ids.Length == 0) continue;
            if (!index.TryGetValue(ids[0], out var list)) index[ids[0]] = list = [];
            list.Add((ids, name));
        }
        foreach (var list in index.Values) list.Sort((a, b) => b.Item1.Length.CompareTo(a.Item1.Length));
        return index;
    }

    private int Use(string name, out int count)
    {
        foreach (var (e, first) in _used)
            if (string.Equals(e.Name, name, StringComparison.OrdinalIgnoreCase)) { count = e.VectorCount; return first; }
        var embedding = _library.Get(name);
        if (_dimension is { } d) embedding.CheckDimension(d);
        int next = _used.Count == 0 ? FirstId : _used[^1].FirstId + _used[^1].Embedding.VectorCount;
        _used.Add((embedding, next));
        count = embedding.VectorCount;
        return next;
    }
}
