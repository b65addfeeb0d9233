using System.Text;
using SdLora.IO.Pickle;
using static TorchSharp.torch;

namespace SdLora.IO;

/// <summary>Opens a single tensor file by what it holds, not by its name: safetensors, or a PyTorch (<c>.ckpt</c>/<c>.pt</c>) checkpoint.</summary>
public static class TensorFiles
{
    private static readonly string[] PyTorchExtensions = [".ckpt", ".pt", ".pth", ".bin"];

    /// <summary>
    /// A zip (or a legacy torch pickle, refused with its own message) is a PyTorch checkpoint; a file whose header is a
    /// safetensors header is safetensors whatever its name; a <c>.ckpt</c>/<c>.pt</c> that is neither is reported as
    /// what it is (a text file, an HTML page, something else), not as a broken safetensors file.
    /// </summary>
    public static ITensorSource Open(string path)
    {
        if (!File.Exists(path)) throw new SdLoraException($"{path}: file not found; check the path");
        var head = new byte[16];
        int n;
        using (var fs = File.OpenRead(path)) n = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        head = head[..n];
        bool zip = n >= 2 && head[0] == (byte)'P' && head[1] == (byte)'K';
        bool legacyPickle = n >= 4 && head[0] == 0x80 && head[1] is >= 2 and <= 5 && head[2] == 0x8a && head[3] == 0x0a;
        if (zip || legacyPickle) return TorchCheckpoint.Open(path);
        bool safetensorsHeader = n >= 9 && head[8] == (byte)'{';
        if (!safetensorsHeader)
        {
            var ext = Path.GetExtension(path).ToLowerInvariant();
            if (PyTorchExtensions.Contains(ext))
                throw new SdLoraException($"{path}: is not a PyTorch checkpoint (neither a zip nor a pickle{Describe(path, head)}); the download probably failed or saved an error page: re-download it");
            if (ext != ".safetensors" && Describe(path, head) is { Length: > 0 } what)
                throw new SdLoraException($"{path}: is not a model file{what}; pass a .safetensors or .ckpt file");
        }
        return SafetensorsFile.Open(path);
    }

    /// <summary>The stored dtype of one tensor, without reading it where the format allows.</summary>
    public static ScalarType DTypeOf(ITensorSource source, string name) => source switch
    {
        SafetensorsFile f => f[name].ScalarType,
        TorchCheckpoint c => c.DTypeOf(name),
        _ => ReadDType(source, name),
    };

    /// <summary>The file's string metadata (safetensors <c>__metadata__</c>); empty for other sources.</summary>
    public static IReadOnlyDictionary<string, string> MetadataOf(ITensorSource source) =>
        source is SafetensorsFile f ? f.Metadata : new Dictionary<string, string>();

    private static ScalarType ReadDType(ITensorSource source, string name)
    {
        using var t = source.Load(name);
        return t.dtype;
    }

    private static string Describe(string path, byte[] head)
    {
        if (head.Length == 0) return ": it is empty";
        if (head.Length >= 3 && head[0] == 0xFF && head[1] == 0xD8 && head[2] == 0xFF) return ": it is a JPEG image";
        if (head.Length >= 4 && head[0] == 0x89 && head[1] == (byte)'P' && head[2] == (byte)'N' && head[3] == (byte)'G') return ": it is a PNG image";
        bool text = head.All(b => b is 9 or 10 or 13 || (b >= 32 && b < 127));
        if (!text) return "";
        var firstLine = File.ReadLines(path).FirstOrDefault()?.Trim() ?? "";
        if (firstLine.Length > 40) firstLine = firstLine[..40] + "...";
        bool html = firstLine.StartsWith('<');
        return $": it is {(html ? "an HTML page" : "a text file")} starting \"{firstLine}\"";
    }
}
