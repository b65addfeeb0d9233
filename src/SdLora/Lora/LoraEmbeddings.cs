using SdLora.IO;
using SdLora.Text;
using TorchSharp;

namespace SdLora.Lora;

/// <summary>
/// Word embeddings that come with a LoRA and are usable in prompts while the LoRA is in use (A1111's rule for its
/// "bundled" embeddings):
/// <list type="bullet">
/// <item>a pivotal-tuning run's vectors, written by sdlora beside the LoRA as <c>NAME.embeddings/WORD.safetensors</c>
///   (kohya's embedding file, so the LoRA itself stays a plain kohya file that diffusers loads too);</item>
/// <item>embeddings bundled inside the LoRA file as <c>bundle_emb.WORD.string_to_param.*</c> (A1111, ComfyUI, LyCORIS's
///   bundling tool) or <c>bundle_emb.WORD.clip_l</c> (OneTrainer).</item>
/// </list>
/// </summary>
public static class LoraEmbeddings
{
    /// <summary>Key prefix of an embedding bundled inside a LoRA file.</summary>
    public const string BundlePrefix = "bundle_emb.";

    /// <summary>The folder of the embeddings trained with <paramref name="loraPath"/>: <c>NAME.embeddings</c> beside <c>NAME.safetensors</c>.</summary>
    public static string FolderBeside(string loraPath) => Path.ChangeExtension(loraPath, ".embeddings");

    /// <summary>Where the vectors of <paramref name="word"/> trained with <paramref name="loraPath"/> are written: <c>NAME.embeddings/WORD.safetensors</c>.</summary>
    public static string FileBeside(string loraPath, string word) => Path.Combine(FolderBeside(loraPath), word + ".safetensors");

    /// <summary>
    /// Deletes a LoRA file and the words trained with it: left behind, the words would come with the next LoRA written
    /// under that name. Missing parts are fine.
    /// </summary>
    public static void DeleteWithWords(string loraPath)
    {
        var words = FolderBeside(loraPath);
        if (Directory.Exists(words)) Directory.Delete(words, recursive: true);
        File.Delete(loraPath);
    }

    /// <summary>True for a key that holds a bundled embedding, not a LoRA factor.</summary>
    public static bool IsBundleKey(string key) => key.StartsWith(BundlePrefix, StringComparison.Ordinal);

    /// <summary>The embeddings that come with each of <paramref name="loraPaths"/> (a missing file has none: attaching it reports it).</summary>
    public static LoraWords ReadAll(IEnumerable<string> loraPaths)
    {
        var all = new List<TextualInversionEmbedding>();
        try
        {
            foreach (var path in loraPaths) all.AddRange(Read(path));
        }
        catch
        {
            foreach (var e in all) e.Dispose();
            throw;
        }
        return new LoraWords(all);
    }

    /// <summary>
    /// Every embedding that comes with the LoRA in <paramref name="loraPath"/>: the bundled ones, then the folder's (which win
    /// on a name clash, being sdlora's own). The caller disposes them.
    /// </summary>
    public static List<TextualInversionEmbedding> Read(string loraPath)
    {
        var result = new Dictionary<string, TextualInversionEmbedding>(StringComparer.OrdinalIgnoreCase);
        try
        {
            if (string.Equals(Path.GetExtension(loraPath), ".safetensors", StringComparison.OrdinalIgnoreCase) && File.Exists(loraPath))
                foreach (var e in ReadBundled(loraPath)) Put(result, e);
            var folder = FolderBeside(loraPath);
            if (Directory.Exists(folder))
                foreach (var f in Directory.EnumerateFiles(folder).Order(StringComparer.Ordinal))
                    if (TextualInversionEmbedding.Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                        Put(result, TextualInversionEmbedding.Read(f));
        }
        catch
        {
            foreach (var e in result.Values) e.Dispose();
            throw;
        }
        return [.. result.Values];
    }

    private static void Put(Dictionary<string, TextualInversionEmbedding> into, TextualInversionEmbedding e)
    {
        if (into.Remove(e.Name, out var old)) old.Dispose();
        into[e.Name] = e;
    }

    /// <summary>
    /// The embeddings bundled inside a LoRA file, one per <c>bundle_emb.WORD.*</c> group: its <c>string_to_param.*</c>
    /// (A1111's layout), else <c>emb_params</c>, else <c>clip_l</c> (SD1.x's text encoder), else its only tensor. A group
    /// with several tensors and none of those names is refused with one line naming the file.
    /// </summary>
    public static List<TextualInversionEmbedding> ReadBundled(string loraPath)
    {
        var result = new List<TextualInversionEmbedding>();
        string? hash = null;
        using var file = SafetensorsFile.Open(loraPath);
        var groups = file.Keys.Where(IsBundleKey)
            .Select(k => (Key: k, Tail: k[BundlePrefix.Length..]))
            .Where(k => k.Tail.Contains('.'))
            .GroupBy(k => k.Tail[..k.Tail.IndexOf('.')], StringComparer.Ordinal);
        try
        {
            foreach (var g in groups)
            {
                var byPart = g.ToDictionary(k => k.Tail[(g.Key.Length + 1)..], k => k.Key, StringComparer.Ordinal);
                string? key = byPart.GetValueOrDefault("string_to_param.*") ?? byPart.GetValueOrDefault(TextualInversionEmbedding.KohyaTensorName)
                    ?? byPart.GetValueOrDefault("clip_l") ?? (byPart.Count == 1 ? byPart.Values.Single() : null);
                if (key is null)
                    throw new SdLoraException($"{loraPath}: its bundled embedding '{g.Key}' has {byPart.Count} tensors ({string.Join(", ", byPart.Keys)}) and none sdlora reads " +
                        "(string_to_param.*, emb_params or clip_l); remove it from the file or export the embedding on its own");
                using var vectors = file.Load(key, torch.ScalarType.Float32);
                if (vectors.dim() is not (1 or 2))
                    throw new SdLoraException($"{loraPath}: its bundled embedding '{key}' has shape [{string.Join(",", vectors.shape)}], not [vectors, dim]");
                using var rows = vectors.dim() == 1 ? vectors.unsqueeze(0) : vectors.alias();
                hash ??= TextualInversionEmbedding.FileShortHash(loraPath);
                result.Add(new TextualInversionEmbedding(g.Key, rows, loraPath + "/" + g.Key, hash));
            }
        }
        catch
        {
            foreach (var e in result) e.Dispose();
            throw;
        }
        return result;
    }
}

/// <summary>Embeddings read by <see cref="LoraEmbeddings.ReadAll"/>, owned here.</summary>
public sealed class LoraWords(IReadOnlyList<TextualInversionEmbedding> embeddings) : IDisposable
{
    public IReadOnlyList<TextualInversionEmbedding> Embeddings => embeddings;

    public void Dispose()
    {
        foreach (var e in embeddings) e.Dispose();
    }
}
