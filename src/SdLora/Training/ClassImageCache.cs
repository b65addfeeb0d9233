using System.Security.Cryptography;
using System.Text;

namespace SdLora.Training;

/// <summary>
/// Class images kept across runs: generating them is most of a CPU workflow's time, and the same base model, class
/// prompt, size, sampler and steps always asks for the same kind of picture. Each combination has its own folder
/// (<see cref="FolderFor"/>) of <c>class_NNNNN.png</c> (+ <c>.txt</c> with the prompt); a run copies what it needs into
/// its class-image folder and adds what it generates to the cache.
/// </summary>
public sealed class ClassImageCache(string root)
{
    public string Root { get; } = root;

    /// <summary>What the cached images depend on. <paramref name="modelHash"/> is the A1111 short hash of the checkpoint.</summary>
    public static string Key(string modelHash, string classPrompt, int width, int height, string sampler, int steps, double cfg, int clipSkip)
    {
        var text = string.Join("|", modelHash, classPrompt, $"{width}x{height}", sampler, steps,
            cfg.ToString("R", System.Globalization.CultureInfo.InvariantCulture), clipSkip);
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16].ToLowerInvariant();
    }

    public string FolderFor(string key) => Path.Combine(Root, key);

    /// <summary>The cached images of <paramref name="key"/>, in their order.</summary>
    public IReadOnlyList<string> Images(string key)
    {
        var dir = FolderFor(key);
        return Directory.Exists(dir) ? DreamBoothDataset.ImageFiles(dir).Order(StringComparer.Ordinal).ToList() : [];
    }

    /// <summary>
    /// Copies up to <paramref name="wanted"/> cached images (with their caption files) that <paramref name="classDir"/>
    /// does not hold yet (by file name) into it; returns how many were copied.
    /// </summary>
    public int CopyInto(string key, string classDir, int wanted)
    {
        if (wanted <= 0) return 0;
        Directory.CreateDirectory(classDir);
        int copied = 0;
        foreach (var image in Images(key))
        {
            if (copied == wanted) break;
            var target = Path.Combine(classDir, Path.GetFileName(image));
            if (File.Exists(target)) continue;
            var caption = Path.ChangeExtension(image, ".txt");
            if (File.Exists(caption)) IO.AtomicFile.WriteAllBytes(Path.ChangeExtension(target, ".txt"), File.ReadAllBytes(caption));
            IO.AtomicFile.WriteAllBytes(target, File.ReadAllBytes(image));
            copied++;
        }
        return copied;
    }

    /// <summary>Adds one generated image (already saved as <paramref name="imagePath"/>) to the cache under the same file name when that name is free.</summary>
    public void Add(string key, string imagePath)
    {
        var dir = FolderFor(key);
        Directory.CreateDirectory(dir);
        var target = Path.Combine(dir, Path.GetFileName(imagePath));
        if (File.Exists(target)) return;
        var caption = Path.ChangeExtension(imagePath, ".txt");
        if (File.Exists(caption)) IO.AtomicFile.WriteAllBytes(Path.ChangeExtension(target, ".txt"), File.ReadAllBytes(caption));
        IO.AtomicFile.WriteAllBytes(target, File.ReadAllBytes(imagePath));
    }
}
