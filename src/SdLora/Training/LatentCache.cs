using System.Security.Cryptography;
using System.Text;
using SdLora.Imaging;
using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Training;

/// <summary>
/// Identifies one cached latent: the image file (full path, size, last-write time; or its content
/// hash), the bucket it was placed in, the crop and the flip. Any change gives a new key, so stale
/// latents are never read.
/// </summary>
public readonly record struct LatentCacheKey(string Hash)
{
    public static LatentCacheKey For(string imagePath, ImagePlacement placement, bool flip, bool hashContent = false)
    {
        var info = new FileInfo(imagePath);
        if (!info.Exists) throw new SdLoraException($"{imagePath}: image not found (moved or deleted after the dataset was read?)");
        string identity = hashContent
            ? Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(imagePath)))
            : $"{info.FullName}|{info.Length}|{info.LastWriteTimeUtc.Ticks}";
        var text = $"v1|{identity}|{placement.Bucket.Width}x{placement.Bucket.Height}|{placement.ResizedWidth}x{placement.ResizedHeight}|{placement.CropX},{placement.CropY}|{(flip ? 1 : 0)}";
        return new LatentCacheKey(Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..32].ToLowerInvariant());
    }

    public override string ToString() => Hash;
}

/// <summary>
/// Latents by <see cref="LatentCacheKey"/>: in memory, and also on disk (one small <c>.safetensors</c> per
/// latent, written atomically) when a folder is given (<c>--cache-latents-to-disk</c>). The VAE stays
/// outside: callers pass the encoder.
/// </summary>
public sealed class LatentCache : IDisposable
{
    private readonly Dictionary<LatentCacheKey, Tensor> _memory = [];
    /// <summary>Disk folder, or null for memory only.</summary>
    public string? Directory { get; }
    public bool KeepInMemory { get; }
    public int Hits { get; private set; }
    public int Misses { get; private set; }

    public LatentCache(string? directory = null, bool keepInMemory = true)
    {
        if (directory is null && !keepInMemory) throw new ArgumentException("a latent cache needs memory, a folder, or both");
        Directory = directory; KeepInMemory = keepInMemory;
        if (directory is not null) System.IO.Directory.CreateDirectory(directory);
    }

    public string PathFor(LatentCacheKey key) => Path.Combine(Directory ?? throw new InvalidOperationException("memory-only cache"), key.Hash[..2], key.Hash + ".safetensors");

    public bool TryGet(LatentCacheKey key, out Tensor latent)
    {
        if (_memory.TryGetValue(key, out latent!)) return true;
        if (Directory is not null && File.Exists(PathFor(key)))
        {
            try
            {
                using var f = SafetensorsFile.Open(PathFor(key));
                var t = f.Load("latent");
                t.DetachFromDisposeScope();
                if (KeepInMemory) _memory[key] = t;
                latent = t;
                return true;
            }
            catch (SdLoraException) { File.Delete(PathFor(key)); } // a torn or foreign file: re-encode
        }
        latent = null!;
        return false;
    }

    public void Put(LatentCacheKey key, Tensor latent)
    {
        var cpu = latent.detach().cpu().contiguous();
        cpu.DetachFromDisposeScope();
        if (Directory is not null)
            Safetensors.Save(PathFor(key), new Dictionary<string, Tensor> { ["latent"] = cpu }, new Dictionary<string, string> { ["key"] = key.Hash });
        if (KeepInMemory)
        {
            if (_memory.Remove(key, out var old)) old.Dispose();
            _memory[key] = cpu;
        }
        else cpu.Dispose();
    }

    /// <summary>
    /// The latent of <paramref name="item"/>: from the cache, or by loading the image, placing it in its bucket and
    /// calling <paramref name="encode"/> (image -> latent), then storing the result. The returned tensor is owned by
    /// the cache when memory caching is on; callers must not dispose it.
    /// </summary>
    public Tensor GetOrEncode(TrainingImage image, ImagePlacement placement, bool flip, Func<RgbImage, Tensor> encode)
    {
        var key = LatentCacheKey.For(image.Path, placement, flip);
        if (TryGet(key, out var cached)) { Hits++; return cached; }
        Misses++;
        using (var scope = torch.NewDisposeScope())
        {
            var latent = encode(placement.Apply(RgbImage.Load(image.Path), flip));
            Put(key, latent);
        }
        if (!TryGet(key, out var stored)) throw new InvalidOperationException("latent cache lost a value it just stored");
        return stored;
    }

    public int Count => _memory.Count;

    public void Dispose()
    {
        foreach (var t in _memory.Values) t.Dispose();
        _memory.Clear();
    }
}
