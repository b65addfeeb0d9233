using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Lora;

public sealed record LoraModuleInfo(string Name, LoraPart? Part, string Kind, int Rank, double Alpha, long[] DownShape, long[] UpShape);

/// <summary>A word that comes with a LoRA (<see cref="LoraEmbeddings"/>): its name, its vectors and where it is stored.</summary>
public sealed record LoraWordInfo(string Word, int Vectors, string Source);

/// <summary>What <c>sdlora lora inspect</c> shows: format, metadata, per-module rank/alpha, UNet/TE split, size, the words that come with it.</summary>
public sealed record LoraInspection(string Path, long FileSize, LoraDialect Dialect, string DType, IReadOnlyDictionary<string, string> Metadata,
    IReadOnlyList<LoraModuleInfo> Modules, IReadOnlyList<string> UnknownKeys, IReadOnlyList<LoraWordInfo>? Words = null)
{
    public int UnetModules => Modules.Count(m => m.Part == LoraPart.Unet);
    public int TextEncoderModules => Modules.Count(m => m.Part == LoraPart.TextEncoder);
    public long ParameterCount => Modules.Sum(m => m.DownShape.Aggregate(1L, (a, b) => a * b) + m.UpShape.Aggregate(1L, (a, b) => a * b));
}

public static class LoraInspector
{
    public static LoraInspection Inspect(string path)
    {
        using var lora = LoraFile.Read(path);
        var modules = lora.Modules.Select(m => new LoraModuleInfo(m.KohyaName, m.Part,
            !m.IsConv ? "linear" : $"conv{m.Down.shape[2]}x{m.Down.shape[3]}", m.Rank, m.Alpha is { } a && a != 0 ? a : m.Rank, m.Down.shape, m.Up.shape)).ToList();
        using var words = LoraEmbeddings.ReadAll([path]);
        var wordInfo = words.Embeddings.Select(e => new LoraWordInfo(e.Name, e.VectorCount,
            e.Path is { } p && File.Exists(p) ? System.IO.Path.GetRelativePath(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!, p) : "bundled in the file")).ToList();
        return new LoraInspection(path, lora.FileSize, lora.Dialect, lora.StoredDType, lora.Metadata, modules, lora.UnknownKeys, wordInfo);
    }
}

/// <summary>
/// A diffusers model folder seen as one tensor source with <c>unet.</c> / <c>text_encoder.</c> prefixes (the names the
/// merge/extract cores use). Single-file checkpoints go through <see cref="LdmFileKeyToPrefixed"/> unless the caller passes its own map.
/// </summary>
public sealed class LoraModelSource : ITensorSource, IDisposable
{
    private readonly List<ITensorSource> _files = [];
    private readonly Dictionary<string, (ITensorSource File, string Key)> _keys = new(StringComparer.Ordinal);

    public string Description { get; }
    public IEnumerable<string> Keys => _keys.Keys;
    public bool Contains(string name) => _keys.ContainsKey(name);
    public long[] ShapeOf(string name) => _keys[name].File.ShapeOf(_keys[name].Key);
    public Tensor Load(string name, ScalarType? dtype = null) => _keys[name].File.Load(_keys[name].Key, dtype);

    /// <summary>An LDM single-file key -> <c>unet.X</c> / <c>text_encoder.X</c> (SD1.x block layout), or null for the VAE and extras.</summary>
    public static string? LdmFileKeyToPrefixed(string fileKey) =>
        SdLora.Checkpoints.LdmKeyMap.TryLdmKeyToDiffusers(fileKey, SdLora.Models.UNetConfig.StableDiffusion15, SdLora.Models.AutoencoderKLConfig.StableDiffusion15, out var part, out var name)
            ? part switch
            {
                SdLora.Checkpoints.ModelPart.UNet => "unet." + name,
                SdLora.Checkpoints.ModelPart.TextEncoder => "text_encoder." + name,
                _ => null,
            }
            : null;

    private LoraModelSource(string description) => Description = description;

    /// <summary>Opens a diffusers folder, or a single file through <paramref name="keyMap"/> (default <see cref="LdmFileKeyToPrefixed"/>).</summary>
    public static LoraModelSource Open(string path, Func<string, string?>? keyMap = null)
    {
        var src = new LoraModelSource(path);
        try
        {
            if (Directory.Exists(path))
            {
                foreach (var (folder, prefix) in LoraCheckpointMerge.DiffusersParts)
                {
                    var dir = System.IO.Path.Combine(path, folder);
                    if (!Directory.Exists(dir)) continue;
                    foreach (var f in Directory.GetFiles(dir, "*.safetensors").Order(StringComparer.Ordinal))
                    {
                        var file = SafetensorsFile.Open(f);
                        src._files.Add(file);
                        foreach (var k in file.Keys) src._keys[prefix + k] = (file, k);
                    }
                }
                if (src._keys.Count == 0) throw new SdLoraException($"{path}: has no unet/*.safetensors or text_encoder/*.safetensors; pass a diffusers model folder");
            }
            else if (File.Exists(path))
            {
                var map = keyMap ?? LdmFileKeyToPrefixed;
                var file = TensorFiles.Open(path); // .safetensors or .ckpt, by content
                src._files.Add(file);
                foreach (var k in file.Keys) if (map(k) is { } name) src._keys[name] = (file, k);
                if (src._keys.Count == 0) throw new SdLoraException($"{path}: no tensor maps to a UNet or text-encoder weight; is it a Stable Diffusion 1.x checkpoint?");
            }
            else throw new SdLoraException($"{path}: not found; pass a diffusers model folder or a .safetensors/.ckpt checkpoint");
            return src;
        }
        catch { src.Dispose(); throw; }
    }

    public void Dispose() { foreach (var f in _files) (f as IDisposable)?.Dispose(); }
}
