using System.Text.RegularExpressions;
using SdLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Lora;

/// <summary>Which UNet layers a new LoRA network adapts (flags; combine with |).</summary>
[Flags]
public enum LoraUnetTargets
{
    None = 0,
    /// <summary><c>attn1/attn2 .to_q .to_k .to_v .to_out.0</c> in every transformer block (the default).</summary>
    Attention = 1,
    /// <summary><c>proj_in</c> / <c>proj_out</c> of every Transformer2DModel.</summary>
    Projections = 2,
    /// <summary><c>ff.net.0.proj</c> / <c>ff.net.2</c>.</summary>
    FeedForward = 4,
    /// <summary>ResNet <c>conv1/conv2</c> (3x3, conv rank), <c>conv_shortcut</c>, <c>time_emb_proj</c>, down/up-sampler convs (kohya's LoCon via conv_dim).</summary>
    Convs = 8,
    /// <summary>What kohya's networks.lora adapts without conv_dim: every Linear / 1x1 conv in a Transformer2DModel.</summary>
    KohyaDefault = Attention | Projections | FeedForward,
}

/// <summary>Options for a freshly created (trainable) LoRA network.</summary>
public sealed record LoraNetworkOptions
{
    public int Rank { get; init; } = 4;
    /// <summary>0 = rank (scale 1). kohya's default network_alpha is 1.</summary>
    public double Alpha { get; init; } = 1.0;
    /// <summary>Rank of 3x3 conv LoRAs (kohya conv_dim); defaults to <see cref="Rank"/>.</summary>
    public int? ConvRank { get; init; }
    /// <summary>Alpha of 3x3 conv LoRAs (kohya conv_alpha); defaults to <see cref="Alpha"/>.</summary>
    public double? ConvAlpha { get; init; }
    public bool TrainUnet { get; init; } = true;
    public bool TrainTextEncoder { get; init; } = true;
    public LoraUnetTargets UnetTargets { get; init; } = LoraUnetTargets.Attention;
    /// <summary>Also adapt the text encoder's <c>mlp.fc1/fc2</c> (besides q/k/v/out_proj).</summary>
    public bool TextEncoderMlp { get; init; } = true;
    public double Dropout { get; init; }
}

/// <summary>kohya naming: prefix + diffusers/transformers module path with '.' replaced by '_'.</summary>
public static class KohyaNames
{
    public const string UnetPrefix = "lora_unet_";
    public const string TextEncoderPrefix = "lora_te_";
    /// <summary>Prefixes of diffusers/PEFT keys.</summary>
    public const string DiffusersUnetPrefix = "unet.";
    public const string DiffusersTextEncoderPrefix = "text_encoder.";

    public static string FromModulePath(LoraPart part, string modulePath) =>
        (part == LoraPart.Unet ? UnetPrefix : TextEncoderPrefix) + modulePath.Replace('.', '_');

    /// <summary><c>unet.a.b</c> / <c>text_encoder.a.b</c> -> kohya name; null when the path has neither prefix.</summary>
    public static string? FromDiffusersKeyPath(string prefixedPath)
    {
        if (prefixedPath.StartsWith(DiffusersUnetPrefix, StringComparison.Ordinal)) return FromModulePath(LoraPart.Unet, prefixedPath[DiffusersUnetPrefix.Length..]);
        if (prefixedPath.StartsWith(DiffusersTextEncoderPrefix, StringComparison.Ordinal)) return FromModulePath(LoraPart.TextEncoder, prefixedPath[DiffusersTextEncoderPrefix.Length..]);
        return null;
    }

    public static string PrefixedPath(LoraPart part, string modulePath) =>
        (part == LoraPart.Unet ? DiffusersUnetPrefix : DiffusersTextEncoderPrefix) + modulePath;
}

/// <summary>Which module paths (diffusers / transformers names) each target group covers.</summary>
public static class LoraTargetRules
{
    private static readonly Regex Attention = new(@"(^|\.)attentions\.\d+\.transformer_blocks\.\d+\.attn\d\.(to_q|to_k|to_v|to_out\.0)$", RegexOptions.Compiled);
    private static readonly Regex Projections = new(@"(^|\.)attentions\.\d+\.(proj_in|proj_out)$", RegexOptions.Compiled);
    private static readonly Regex FeedForward = new(@"(^|\.)attentions\.\d+\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$", RegexOptions.Compiled);
    private static readonly Regex Convs = new(@"(^|\.)(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|(downsamplers|upsamplers)\.0\.conv)$", RegexOptions.Compiled);
    private static readonly Regex TextAttention = new(@"^text_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$", RegexOptions.Compiled);
    private static readonly Regex TextMlp = new(@"^text_model\.encoder\.layers\.\d+\.mlp\.(fc1|fc2)$", RegexOptions.Compiled);

    /// <summary>The UNet group a module path belongs to, or None.</summary>
    public static LoraUnetTargets ClassifyUnet(string modulePath) =>
        Attention.IsMatch(modulePath) ? LoraUnetTargets.Attention
        : Projections.IsMatch(modulePath) ? LoraUnetTargets.Projections
        : FeedForward.IsMatch(modulePath) ? LoraUnetTargets.FeedForward
        : Convs.IsMatch(modulePath) ? LoraUnetTargets.Convs
        : LoraUnetTargets.None;

    public static bool IsUnetTarget(string modulePath, LoraUnetTargets targets)
    {
        var group = ClassifyUnet(modulePath);
        return group != LoraUnetTargets.None && (targets & group) != 0;
    }

    public static bool IsTextEncoderTarget(string modulePath, bool includeMlp) =>
        TextAttention.IsMatch(modulePath) || (includeMlp && TextMlp.IsMatch(modulePath));
}

/// <summary>A layer a LoRA can adapt: its part, module path (diffusers names) and weight shape; the live module when built from a model.</summary>
public sealed record LoraTarget(LoraPart Part, string ModulePath, long[] WeightShape, nn.Module? Layer = null)
{
    public string KohyaName => KohyaNames.FromModulePath(Part, ModulePath);
    public string PrefixedPath => KohyaNames.PrefixedPath(Part, ModulePath);
    public long OutFeatures => WeightShape[0];
    public long InFeatures => WeightShape[1];
    public bool IsConv => WeightShape.Length == 4;
    public long Kernel => IsConv ? WeightShape[2] : 1;
}

/// <summary>
/// The set of names a LoRA key may use to address each adaptable layer of a model, built from the model itself
/// (its modules, or its checkpoint's parameter names) so that matching never guesses where underscores were dots.
/// </summary>
public sealed class LoraTargetIndex
{
    private readonly Dictionary<string, LoraTarget> _byKohya = new(StringComparer.Ordinal);
    private readonly Dictionary<string, LoraTarget> _byPrefixedPath = new(StringComparer.Ordinal);

    public IReadOnlyCollection<LoraTarget> Targets => _byPrefixedPath.Values;

    private void Add(LoraTarget t)
    {
        _byKohya[t.KohyaName] = t;
        _byPrefixedPath[t.PrefixedPath] = t;
    }

    /// <summary>Every <see cref="AdaptableLinear"/> / <see cref="AdaptableConv2d"/> under the given roots (either may be null).</summary>
    public static LoraTargetIndex FromModules(nn.Module? unet, nn.Module? textEncoder)
    {
        var index = new LoraTargetIndex();
        foreach (var (part, root) in new[] { (LoraPart.Unet, unet), (LoraPart.TextEncoder, textEncoder) })
        {
            if (root is null) continue;
            foreach (var (path, module) in root.named_modules())
            {
                switch (module)
                {
                    case AdaptableLinear lin: index.Add(new LoraTarget(part, path, lin.weight.shape, lin)); break;
                    case AdaptableConv2d conv: index.Add(new LoraTarget(part, path, conv.weight.shape, conv)); break;
                }
            }
        }
        return index;
    }

    /// <summary>From checkpoint parameter names (<c>unet.X.weight</c> / <c>text_encoder.X.weight</c>) and their shapes: every 2-D or 4-D weight.</summary>
    public static LoraTargetIndex FromParameters(IEnumerable<(string PrefixedName, long[] Shape)> parameters)
    {
        var index = new LoraTargetIndex();
        foreach (var (name, shape) in parameters)
        {
            if (!name.EndsWith(".weight", StringComparison.Ordinal) || (shape.Length != 2 && shape.Length != 4)) continue;
            var path = name[..^".weight".Length];
            if (path.StartsWith(KohyaNames.DiffusersUnetPrefix, StringComparison.Ordinal))
                index.Add(new LoraTarget(LoraPart.Unet, path[KohyaNames.DiffusersUnetPrefix.Length..], shape));
            else if (path.StartsWith(KohyaNames.DiffusersTextEncoderPrefix, StringComparison.Ordinal))
                index.Add(new LoraTarget(LoraPart.TextEncoder, path[KohyaNames.DiffusersTextEncoderPrefix.Length..], shape));
        }
        return index;
    }

    public LoraTarget? ByKohyaName(string name) => _byKohya.GetValueOrDefault(name);
    public LoraTarget? ByPrefixedPath(string path) => _byPrefixedPath.GetValueOrDefault(path);

    /// <summary>
    /// Resolves a kohya name written with LDM module paths (<c>lora_unet_input_blocks_1_1_proj_in</c>): every way of
    /// re-inserting dots between the name's words is offered to <paramref name="ldmToDiffusers"/>, and the candidate
    /// it maps to a layer of this model wins (digits are always their own path segment).
    /// </summary>
    public LoraTarget? ByLdmKohyaName(string name, Func<string, string?> ldmToDiffusers)
    {
        if (!name.StartsWith(KohyaNames.UnetPrefix, StringComparison.Ordinal)) return null;
        var words = name[KohyaNames.UnetPrefix.Length..].Split('_');
        // Positions between two non-numeric words are ambiguous ('.' or '_'); around digits it is always '.'.
        var ambiguous = new List<int>();
        for (int i = 0; i < words.Length - 1; i++)
            if (!IsNumber(words[i]) && !IsNumber(words[i + 1])) ambiguous.Add(i);
        if (ambiguous.Count > 16) return null;
        for (int mask = 0; mask < 1 << ambiguous.Count; mask++)
        {
            var sb = new System.Text.StringBuilder(words[0]);
            for (int i = 0, a = 0; i < words.Length - 1; i++)
            {
                char sep = '.';
                if (a < ambiguous.Count && ambiguous[a] == i) { sep = (mask & (1 << a)) != 0 ? '_' : '.'; a++; }
                sb.Append(sep).Append(words[i + 1]);
            }
            var diffusersPath = ldmToDiffusers(sb.ToString());
            if (diffusersPath is not null && _byPrefixedPath.TryGetValue(KohyaNames.DiffusersUnetPrefix + diffusersPath, out var t)) return t;
        }
        return null;
    }

    private static bool IsNumber(string s) => s.Length > 0 && s.All(char.IsAsciiDigit);
}
