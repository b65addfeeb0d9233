using System.Security.Cryptography;
using SdLora.Lora;

namespace SdLora.Pipelines;

/// <summary>
/// Several LoRA files attached to a model for the duration of one generation, each at its own weight.
/// Disposing detaches them, so the base model gives its exact outputs again.
/// </summary>
public sealed class LoraSet : IDisposable
{
    private readonly List<LoraNetwork> _networks = [];

    /// <summary>LoRA name -> A1111 short hash, for the PNG's <c>Lora hashes</c> field.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Hashes { get; private set; } = [];

    public static LoraSet Attach(StableDiffusionModel model, IReadOnlyList<LoraUse> uses, List<string> warnings)
    {
        var set = new LoraSet();
        var hashes = new List<KeyValuePair<string, string>>();
        try
        {
            foreach (var use in uses)
            {
                if (!File.Exists(use.Path)) throw new SdLoraException($"LoRA {use.Path} not found; check the path (or put NAME.safetensors in the LoRA folder)");
                var net = LoraNetwork.FromFile(use.Path, model.UNet, model.TextEncoder, use.Weight);
                if (use.UNetWeight is { } unetWeight)
                    foreach (var m in net.UnetModules) m.Multiplier = unetWeight;
                if (net.Match?.Warning is { } w) warnings.Add(w);
                net.Attach();
                set._networks.Add(net);
                hashes.Add(new(Path.GetFileNameWithoutExtension(use.Path), A1111ShortHash(use.Path)));
            }
        }
        catch
        {
            set.Dispose();
            throw;
        }
        set.Hashes = hashes;
        return set;
    }

    /// <summary>A1111's LoRA hash: SHA-256 of the safetensors data section (the "addnet" hash), first 12 hex digits.</summary>
    public static string A1111ShortHash(string path)
    {
        using var s = File.OpenRead(path);
        var len = new byte[8];
        s.ReadExactly(len);
        s.Position = 8 + BitConverter.ToInt64(len);
        return Convert.ToHexString(SHA256.HashData(s)).ToLowerInvariant()[..12];
    }

    public void Dispose()
    {
        foreach (var n in _networks)
        {
            n.Detach();
            n.Dispose();
        }
        _networks.Clear();
    }
}
