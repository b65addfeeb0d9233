using SdLora.Models;

namespace SdLora.Checkpoints;

/// <summary>The three networks of a Stable Diffusion checkpoint.</summary>
public enum ModelPart { UNet, Vae, TextEncoder }

/// <summary>
/// The one place that knows how original (CompVis LDM) checkpoint names relate to diffusers / transformers
/// names. The UNet's index arithmetic is derived from the config (number of levels, layers per block, which
/// levels have attention), so any SD1-shaped UNet maps, not only SD1.5's sizes.
/// <para>LDM UNet layout: <c>input_blocks.0</c> is conv_in; level <c>i</c>, layer <c>j</c> is
/// <c>input_blocks[1 + i(L+1) + j]</c> (<c>.0</c> resnet, <c>.1</c> attention) and the downsampler is
/// <c>input_blocks[1 + i(L+1) + L].0.op</c>; decoder level <c>i</c>, layer <c>j</c> (of L+1) is
/// <c>output_blocks[i(L+1) + j]</c> with the upsampler after the resnet (and attention, if any) of the last layer.</para>
/// </summary>
public static class LdmKeyMap
{
    public const string UNetPrefix = "model.diffusion_model.";
    public const string VaePrefix = "first_stage_model.";
    public const string TextEncoderPrefix = "cond_stage_model.transformer.";

    /// <summary>LDM prefix of each part.</summary>
    public static string PrefixOf(ModelPart part) => part switch
    {
        ModelPart.UNet => UNetPrefix,
        ModelPart.Vae => VaePrefix,
        _ => TextEncoderPrefix,
    };

    // ---------------------------------------------------------------- full keys

    /// <summary>
    /// Maps a full LDM checkpoint key (<c>model.diffusion_model.input_blocks.1.0.in_layers.0.weight</c>) to its part and
    /// diffusers/transformers name. Returns false for keys sdlora does not load (EMA copies, schedule buffers, position_ids, ...).
    /// </summary>
    public static bool TryLdmKeyToDiffusers(string ldmKey, UNetConfig unet, AutoencoderKLConfig vae, out ModelPart part, out string name)
    {
        string? mapped = null;
        part = ModelPart.UNet;
        if (ldmKey.StartsWith(UNetPrefix, StringComparison.Ordinal))
        {
            part = ModelPart.UNet;
            mapped = UnetModulePathLdmToDiffusers(ldmKey[UNetPrefix.Length..], unet);
        }
        else if (ldmKey.StartsWith(VaePrefix, StringComparison.Ordinal))
        {
            part = ModelPart.Vae;
            mapped = VaeModulePathLdmToDiffusers(ldmKey[VaePrefix.Length..], vae);
        }
        else if (ldmKey.StartsWith(TextEncoderPrefix, StringComparison.Ordinal))
        {
            part = ModelPart.TextEncoder;
            mapped = TextModulePathLdmToTransformers(ldmKey[TextEncoderPrefix.Length..]);
            if (mapped != null && mapped.EndsWith("position_ids", StringComparison.Ordinal)) mapped = null; // a buffer, not a weight
        }
        name = mapped ?? "";
        return mapped != null;
    }

    /// <summary>The full LDM key for a diffusers/transformers name of <paramref name="part"/> (null when it has no LDM counterpart).</summary>
    public static string? DiffusersKeyToLdm(ModelPart part, string name, UNetConfig unet, AutoencoderKLConfig vae)
    {
        var path = part switch
        {
            ModelPart.UNet => UnetModulePathDiffusersToLdm(name, unet),
            ModelPart.Vae => VaeModulePathDiffusersToLdm(name, vae),
            _ => TextModulePathTransformersToLdm(name),
        };
        return path == null ? null : PrefixOf(part) + path;
    }

    /// <summary>
    /// True for the VAE mid-block attention projection weights, which LDM stores as 1x1 convolutions <c>[C,C,1,1]</c>
    /// and diffusers as linear layers <c>[C,C]</c> (their biases agree).
    /// </summary>
    public static bool IsVaeAttentionProjectionWeight(string diffusersName) =>
        diffusersName.Contains(".mid_block.attentions.0.", StringComparison.Ordinal)
        && (diffusersName.EndsWith(".to_q.weight", StringComparison.Ordinal) || diffusersName.EndsWith(".to_k.weight", StringComparison.Ordinal)
            || diffusersName.EndsWith(".to_v.weight", StringComparison.Ordinal) || diffusersName.EndsWith(".to_out.0.weight", StringComparison.Ordinal));

    // ---------------------------------------------------------------- UNet

    /// <summary>
    /// Converts an LDM UNet module path or key (relative to <c>model.diffusion_model.</c>) to the diffusers path:
    /// <c>input_blocks.1.1.transformer_blocks.0.attn1.to_q</c> -> <c>down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q</c>.
    /// Null when the path is not part of this UNet. <paramref name="config"/> defaults to SD1.5's layout.
    /// </summary>
    public static string? UnetModulePathLdmToDiffusers(string ldmPath, UNetConfig? config = null)
    {
        var c = config ?? UNetConfig.StableDiffusion15;
        int levels = c.Channels.Length, perLevel = c.LayersPerBlock + 1;
        var p = ldmPath.Split('.');
        string Rest(int from) => string.Join('.', p.Skip(from));
        string Join(string head, int from) => from < p.Length ? head + "." + Rest(from) : head;

        switch (p[0])
        {
            case "time_embed" when p.Length >= 2:
                return p[1] switch { "0" => Join("time_embedding.linear_1", 2), "2" => Join("time_embedding.linear_2", 2), _ => null };
            case "out" when p.Length >= 2:
                return p[1] switch { "0" => Join("conv_norm_out", 2), "2" => Join("conv_out", 2), _ => null };
            case "input_blocks" when p.Length >= 3 && int.TryParse(p[1], out int k) && int.TryParse(p[2], out int s):
            {
                if (k == 0) return s == 0 ? Join("conv_in", 3) : null;
                int i = (k - 1) / perLevel, j = (k - 1) % perLevel;
                if (i >= levels) return null;
                if (j < c.LayersPerBlock)
                {
                    if (s == 0) return ResnetLdmToDiffusers($"down_blocks.{i}.resnets.{j}", p, 3);
                    if (s == 1 && HasAttention(c.DownBlocks, i)) return Join($"down_blocks.{i}.attentions.{j}", 3);
                    return null;
                }
                if (s == 0 && i < levels - 1 && p.Length >= 4 && p[3] == "op") return Join($"down_blocks.{i}.downsamplers.0.conv", 4);
                return null;
            }
            case "middle_block" when p.Length >= 2:
                return p[1] switch
                {
                    "0" => ResnetLdmToDiffusers("mid_block.resnets.0", p, 2),
                    "1" => Join("mid_block.attentions.0", 2),
                    "2" => ResnetLdmToDiffusers("mid_block.resnets.1", p, 2),
                    _ => null,
                };
            case "output_blocks" when p.Length >= 3 && int.TryParse(p[1], out int k) && int.TryParse(p[2], out int s):
            {
                int i = k / perLevel, j = k % perLevel;
                if (i >= levels) return null;
                bool attn = HasAttention(c.UpBlocks, i);
                if (s == 0) return ResnetLdmToDiffusers($"up_blocks.{i}.resnets.{j}", p, 3);
                if (s == 1 && attn) return Join($"up_blocks.{i}.attentions.{j}", 3);
                int upsamplerSlot = attn ? 2 : 1;
                if (s == upsamplerSlot && j == c.LayersPerBlock && i < levels - 1) return Join($"up_blocks.{i}.upsamplers.0", 3);
                return null;
            }
        }
        return null;
    }

    /// <summary>The inverse of <see cref="UnetModulePathLdmToDiffusers"/>: <c>down_blocks.0.attentions.0.proj_in</c> -> <c>input_blocks.1.1.proj_in</c>.</summary>
    public static string? UnetModulePathDiffusersToLdm(string diffusersPath, UNetConfig? config = null)
    {
        var c = config ?? UNetConfig.StableDiffusion15;
        int levels = c.Channels.Length, perLevel = c.LayersPerBlock + 1;
        var p = diffusersPath.Split('.');
        string Join(string head, int from) => from < p.Length ? head + "." + string.Join('.', p.Skip(from)) : head;

        switch (p[0])
        {
            case "conv_in": return Join("input_blocks.0.0", 1);
            case "conv_norm_out": return Join("out.0", 1);
            case "conv_out": return Join("out.2", 1);
            case "time_embedding" when p.Length >= 2:
                return p[1] switch { "linear_1" => Join("time_embed.0", 2), "linear_2" => Join("time_embed.2", 2), _ => null };
            case "down_blocks" when p.Length >= 4 && int.TryParse(p[1], out int i) && i < levels && int.TryParse(p[3], out int j):
                return p[2] switch
                {
                    "resnets" when j < c.LayersPerBlock => ResnetDiffusersToLdm($"input_blocks.{1 + i * perLevel + j}.0", p, 4),
                    "attentions" when j < c.LayersPerBlock && HasAttention(c.DownBlocks, i) => Join($"input_blocks.{1 + i * perLevel + j}.1", 4),
                    "downsamplers" when j == 0 && i < levels - 1 && p.Length >= 5 && p[4] == "conv" => Join($"input_blocks.{1 + i * perLevel + c.LayersPerBlock}.0.op", 5),
                    _ => null,
                };
            case "mid_block" when p.Length >= 3:
                return (p[1], p[2]) switch
                {
                    ("resnets", "0") => ResnetDiffusersToLdm("middle_block.0", p, 3),
                    ("attentions", "0") => Join("middle_block.1", 3),
                    ("resnets", "1") => ResnetDiffusersToLdm("middle_block.2", p, 3),
                    _ => null,
                };
            case "up_blocks" when p.Length >= 4 && int.TryParse(p[1], out int i) && i < levels && int.TryParse(p[3], out int j):
            {
                bool attn = HasAttention(c.UpBlocks, i);
                return p[2] switch
                {
                    "resnets" when j <= c.LayersPerBlock => ResnetDiffusersToLdm($"output_blocks.{i * perLevel + j}.0", p, 4),
                    "attentions" when j <= c.LayersPerBlock && attn => Join($"output_blocks.{i * perLevel + j}.1", 4),
                    "upsamplers" when j == 0 && i < levels - 1 => Join($"output_blocks.{i * perLevel + c.LayersPerBlock}.{(attn ? 2 : 1)}", 4),
                    _ => null,
                };
            }
        }
        return null;
    }

    private static bool HasAttention(string[] blockTypes, int i) => i < blockTypes.Length && blockTypes[i].Contains("CrossAttn", StringComparison.Ordinal);

    // LDM ResBlock: in_layers = [GroupNorm, SiLU, Conv], emb_layers = [SiLU, Linear], out_layers = [GroupNorm, SiLU, Dropout, Conv].
    private static readonly (string Ldm, string Diffusers)[] ResnetParts =
    [
        ("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"),
    ];

    private static string? ResnetLdmToDiffusers(string head, string[] p, int from)
    {
        if (from >= p.Length) return head;
        var rest = string.Join('.', p.Skip(from));
        foreach (var (ldm, diff) in ResnetParts)
            if (rest == ldm || rest.StartsWith(ldm + ".", StringComparison.Ordinal)) return head + "." + diff + rest[ldm.Length..];
        return null;
    }

    private static string? ResnetDiffusersToLdm(string head, string[] p, int from)
    {
        if (from >= p.Length) return head;
        var rest = string.Join('.', p.Skip(from));
        foreach (var (ldm, diff) in ResnetParts)
            if (rest == diff || rest.StartsWith(diff + ".", StringComparison.Ordinal)) return head + "." + ldm + rest[diff.Length..];
        return null;
    }

    // ---------------------------------------------------------------- VAE

    private static readonly (string Ldm, string Diffusers)[] VaeAttentionParts =
        [("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")];

    /// <summary>LDM VAE path (relative to <c>first_stage_model.</c>) to diffusers: <c>decoder.up.3.block.0.conv1</c> -> <c>decoder.up_blocks.0.resnets.0.conv1</c> (decoder levels are reversed).</summary>
    public static string? VaeModulePathLdmToDiffusers(string ldmPath, AutoencoderKLConfig? config = null)
    {
        var c = config ?? AutoencoderKLConfig.StableDiffusion15;
        int levels = c.Channels.Length;
        var p = ldmPath.Split('.');
        string Join(string head, int from) => from < p.Length ? head + "." + string.Join('.', p.Skip(from)) : head;
        if (p[0] is "quant_conv" or "post_quant_conv") return ldmPath;
        if (p[0] is not ("encoder" or "decoder") || p.Length < 2) return null;
        string side = p[0];
        switch (p[1])
        {
            case "conv_in" or "conv_out": return ldmPath;
            case "norm_out": return Join(side + ".conv_norm_out", 2);
            case "mid" when p.Length >= 3:
                if (p[2] == "block_1") return VaeResnet(side + ".mid_block.resnets.0", p, 3, toDiffusers: true);
                if (p[2] == "block_2") return VaeResnet(side + ".mid_block.resnets.1", p, 3, toDiffusers: true);
                if (p[2] == "attn_1")
                {
                    if (p.Length == 3) return side + ".mid_block.attentions.0";
                    foreach (var (ldm, diff) in VaeAttentionParts)
                        if (p[3] == ldm) return Join(side + ".mid_block.attentions.0." + diff, 4);
                }
                return null;
            case "down" when side == "encoder" && p.Length >= 4 && int.TryParse(p[2], out int i) && i < levels:
                if (p[3] == "block" && p.Length >= 5 && int.TryParse(p[4], out int j) && j < c.LayersPerBlock)
                    return VaeResnet($"encoder.down_blocks.{i}.resnets.{j}", p, 5, toDiffusers: true);
                if (p[3] == "downsample" && i < levels - 1) return Join($"encoder.down_blocks.{i}.downsamplers.0", 4);
                return null;
            case "up" when side == "decoder" && p.Length >= 4 && int.TryParse(p[2], out int k) && k < levels:
                int u = levels - 1 - k;
                if (p[3] == "block" && p.Length >= 5 && int.TryParse(p[4], out int jj) && jj <= c.LayersPerBlock)
                    return VaeResnet($"decoder.up_blocks.{u}.resnets.{jj}", p, 5, toDiffusers: true);
                if (p[3] == "upsample" && k > 0) return Join($"decoder.up_blocks.{u}.upsamplers.0", 4);
                return null;
        }
        return null;
    }

    /// <summary>The inverse of <see cref="VaeModulePathLdmToDiffusers"/>.</summary>
    public static string? VaeModulePathDiffusersToLdm(string diffusersPath, AutoencoderKLConfig? config = null)
    {
        var c = config ?? AutoencoderKLConfig.StableDiffusion15;
        int levels = c.Channels.Length;
        var p = diffusersPath.Split('.');
        string Join(string head, int from) => from < p.Length ? head + "." + string.Join('.', p.Skip(from)) : head;
        if (p[0] is "quant_conv" or "post_quant_conv") return diffusersPath;
        if (p[0] is not ("encoder" or "decoder") || p.Length < 2) return null;
        string side = p[0];
        switch (p[1])
        {
            case "conv_in" or "conv_out": return diffusersPath;
            case "conv_norm_out": return Join(side + ".norm_out", 2);
            case "mid_block" when p.Length >= 4:
                if (p[2] == "resnets" && p[3] is "0" or "1") return VaeResnet($"{side}.mid.block_{(p[3] == "0" ? 1 : 2)}", p, 4, toDiffusers: false);
                if (p[2] == "attentions" && p[3] == "0")
                {
                    if (p.Length == 4) return side + ".mid.attn_1";
                    var rest = string.Join('.', p.Skip(4));
                    foreach (var (ldm, diff) in VaeAttentionParts)
                        if (rest == diff || rest.StartsWith(diff + ".", StringComparison.Ordinal)) return $"{side}.mid.attn_1.{ldm}{rest[diff.Length..]}";
                }
                return null;
            case "down_blocks" when side == "encoder" && p.Length >= 4 && int.TryParse(p[2], out int i) && i < levels:
                if (p[3] == "resnets" && p.Length >= 5 && int.TryParse(p[4], out int j) && j < c.LayersPerBlock)
                    return VaeResnet($"encoder.down.{i}.block.{j}", p, 5, toDiffusers: false);
                if (p[3] == "downsamplers" && p.Length >= 5 && p[4] == "0" && i < levels - 1) return Join($"encoder.down.{i}.downsample", 5);
                return null;
            case "up_blocks" when side == "decoder" && p.Length >= 4 && int.TryParse(p[2], out int u) && u < levels:
                int k = levels - 1 - u;
                if (p[3] == "resnets" && p.Length >= 5 && int.TryParse(p[4], out int jj) && jj <= c.LayersPerBlock)
                    return VaeResnet($"decoder.up.{k}.block.{jj}", p, 5, toDiffusers: false);
                if (p[3] == "upsamplers" && p.Length >= 5 && p[4] == "0" && k > 0) return Join($"decoder.up.{k}.upsample", 5);
                return null;
        }
        return null;
    }

    private static string? VaeResnet(string head, string[] p, int from, bool toDiffusers)
    {
        if (from >= p.Length) return head;
        var first = p[from];
        string? mapped = first switch
        {
            "norm1" or "norm2" or "conv1" or "conv2" => first,
            "nin_shortcut" when toDiffusers => "conv_shortcut",
            "conv_shortcut" when !toDiffusers => "nin_shortcut",
            _ => null,
        };
        if (mapped == null) return null;
        return from + 1 < p.Length ? head + "." + mapped + "." + string.Join('.', p.Skip(from + 1)) : head + "." + mapped;
    }

    // ---------------------------------------------------------------- text encoder

    /// <summary>
    /// LDM text-encoder path (relative to <c>cond_stage_model.transformer.</c>) to transformers' CLIPTextModel name. Accepts the
    /// current <c>text_model.*</c> naming and the older one without <c>text_model.</c> (transformers before 4.x wrapped nothing).
    /// </summary>
    public static string? TextModulePathLdmToTransformers(string ldmPath)
    {
        if (ldmPath.StartsWith("text_model.", StringComparison.Ordinal)) return ldmPath;
        if (ldmPath.StartsWith("embeddings.", StringComparison.Ordinal) || ldmPath.StartsWith("encoder.", StringComparison.Ordinal)
            || ldmPath.StartsWith("final_layer_norm.", StringComparison.Ordinal)) return "text_model." + ldmPath;
        return null;
    }

    /// <summary>transformers name to the LDM path relative to <c>cond_stage_model.transformer.</c> (current naming).</summary>
    public static string? TextModulePathTransformersToLdm(string name) =>
        name.StartsWith("text_model.", StringComparison.Ordinal) ? name : null;
}
