using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Lora;

/// <summary>
/// kohya's <c>sshs_model_hash</c> / <c>sshs_legacy_hash</c> (sd-scripts <c>precalculate_safetensors_hashes</c>): the file
/// is serialised as the Python safetensors library would write it with only the <c>ss_*</c> metadata, then
/// model hash = sha256 (hex) of the data section (everything after the header), legacy hash = first 8 hex digits of
/// sha256 of the 0x10000 bytes at offset 0x100000 (fewer, or none, when the file is shorter).
/// </summary>
public static class KohyaHashes
{
    private const long LegacyOffset = 0x100000, LegacyLength = 0x10000;

    /// <summary>Tensor order of the Python safetensors writer: by dtype (larger enum first: F64, F32, BF16, F16, ...), then by name.</summary>
    public static List<KeyValuePair<string, Tensor>> WriterOrder(IEnumerable<KeyValuePair<string, Tensor>> tensors) =>
        tensors.OrderByDescending(kv => DTypeRank(kv.Value.dtype)).ThenBy(kv => kv.Key, StringComparer.Ordinal).ToList();

    // The Rust safetensors Dtype enum order (derive(Ord)).
    private static int DTypeRank(ScalarType t) => t switch
    {
        ScalarType.Bool => 0, ScalarType.Byte => 1, ScalarType.Int8 => 2, ScalarType.Int16 => 5, ScalarType.Float16 => 7,
        ScalarType.BFloat16 => 8, ScalarType.Int32 => 9, ScalarType.Float32 => 11, ScalarType.Float64 => 12, ScalarType.Int64 => 13,
        _ => 100,
    };

    public static (string ModelHash, string LegacyHash) Compute(IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        var ordered = WriterOrder(tensors);
        var ss = metadata.Where(kv => kv.Key.StartsWith("ss_", StringComparison.Ordinal)).OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var header = PythonHeader(ordered, ss);

        using var model = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var legacy = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long pos = 0;
        void Feed(ReadOnlySpan<byte> bytes, bool isData)
        {
            if (isData) model.AppendData(bytes);
            long start = Math.Max(pos, LegacyOffset), end = Math.Min(pos + bytes.Length, LegacyOffset + LegacyLength);
            if (end > start) legacy.AppendData(bytes.Slice((int)(start - pos), (int)(end - start)));
            pos += bytes.Length;
        }
        Feed(BitConverter.GetBytes((long)header.Length), false);
        Feed(header, false);
        foreach (var (_, t) in ordered)
        {
            using var c = t.cpu().contiguous();
            Feed(c.bytes, true);
        }
        return (Convert.ToHexStringLower(model.GetHashAndReset()), Convert.ToHexStringLower(legacy.GetHashAndReset())[..8]);
    }

    /// <summary>The header bytes as serde_json writes them in the Rust safetensors library: compact, metadata first, space-padded to 8.</summary>
    private static byte[] PythonHeader(List<KeyValuePair<string, Tensor>> ordered, List<KeyValuePair<string, string>> metadata)
    {
        var sb = new StringBuilder("{\"__metadata__\":{");
        sb.AppendJoin(',', metadata.Select(kv => Json(kv.Key) + ":" + Json(kv.Value)));
        sb.Append('}');
        long offset = 0;
        foreach (var (name, t) in ordered)
        {
            long bytes = t.NumberOfElements * t.ElementSize;
            sb.Append(',').Append(Json(name)).Append(":{\"dtype\":\"").Append(Safetensors.ToCode(t.dtype)).Append("\",\"shape\":[")
              .AppendJoin(',', t.shape).Append("],\"data_offsets\":[").Append(offset).Append(',').Append(offset + bytes).Append("]}");
            offset += bytes;
        }
        sb.Append('}');
        var raw = Encoding.UTF8.GetBytes(sb.ToString());
        int pad = (8 - raw.Length % 8) % 8;
        return pad == 0 ? raw : raw.Concat(Enumerable.Repeat((byte)' ', pad)).ToArray();
    }

    /// <summary>serde_json string escaping: only quote, backslash and control characters; non-ASCII stays raw UTF-8.</summary>
    private static string Json(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (var c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }
}

/// <summary>Builds kohya <c>ss_*</c> metadata (every value a string, as kohya writes them).</summary>
public static class KohyaMetadata
{
    public const string NetworkModule = "networks.lora";

    /// <summary>Python's <c>str(float)</c> for ordinary values: <c>1.0</c>, <c>0.5</c>, <c>2.0</c>.</summary>
    public static string PyFloat(double v) =>
        double.IsFinite(v) && Math.Abs(v) < 1e16 && v == Math.Floor(v) ? v.ToString("0", CultureInfo.InvariantCulture) + ".0"
        : v.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>
    /// The fields every sdlora LoRA carries. <paramref name="convRank"/>/<paramref name="convAlpha"/> go to <c>ss_network_args</c>
    /// as kohya's conv_dim/conv_alpha; <paramref name="clipSkip"/> null = "None".
    /// </summary>
    public static Dictionary<string, string> Build(int rank, double alpha, int? convRank = null, double? convAlpha = null,
        string? outputName = null, string? sdModelName = null, int? clipSkip = null)
    {
        var md = new Dictionary<string, string>
        {
            ["ss_network_module"] = NetworkModule,
            ["ss_network_dim"] = rank.ToString(CultureInfo.InvariantCulture),
            ["ss_network_alpha"] = PyFloat(alpha),
            ["ss_base_model_version"] = "sd_v1",
            ["ss_v2"] = "False",
            ["ss_clip_skip"] = clipSkip?.ToString(CultureInfo.InvariantCulture) ?? "None",
        };
        if (convRank is { } cr)
            md["ss_network_args"] = $"{{\"conv_dim\": \"{cr.ToString(CultureInfo.InvariantCulture)}\", \"conv_alpha\": \"{PyFloat(convAlpha ?? alpha)}\"}}";
        if (outputName is not null) md["ss_output_name"] = outputName;
        if (sdModelName is not null) md["ss_sd_model_name"] = sdModelName;
        return md;
    }
}

/// <summary>Writes kohya-format LoRA files: tensors in the Python writer's order, <c>ss_*</c> metadata plus the two sshs hashes. Atomic.</summary>
public static class KohyaLoraWriter
{
    /// <summary>
    /// Saves <paramref name="tensors"/> (kohya names) converted to <paramref name="dtype"/> (fp16 or fp32).
    /// Hashes are computed over exactly the tensors written and the <c>ss_*</c> keys of <paramref name="metadata"/>.
    /// Returns the metadata as written.
    /// </summary>
    public static Dictionary<string, string> Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string> metadata, ScalarType dtype = ScalarType.Float16)
    {
        if (dtype != ScalarType.Float16 && dtype != ScalarType.Float32 && dtype != ScalarType.BFloat16)
            throw new ArgumentException("LoRA files are written as fp16, bf16 or fp32", nameof(dtype));
        using var scope = torch.NewDisposeScope();
        var converted = tensors.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.detach().to(dtype).cpu().contiguous())).ToList();
        var ordered = KohyaHashes.WriterOrder(converted);
        var md = new Dictionary<string, string>(metadata);
        var (model, legacy) = KohyaHashes.Compute(ordered, md);
        md["sshs_model_hash"] = model;
        md["sshs_legacy_hash"] = legacy;
        Safetensors.Save(path, ordered, md);
        return md;
    }

    /// <summary>The kohya triple for one module.</summary>
    public static IEnumerable<KeyValuePair<string, Tensor>> ModuleTensors(string kohyaName, Tensor down, Tensor up, double alpha)
    {
        yield return new(kohyaName + ".alpha", torch.tensor(alpha, ScalarType.Float32));
        yield return new(kohyaName + ".lora_down.weight", down);
        yield return new(kohyaName + ".lora_up.weight", up);
    }
}
