using System.Text.Json;
using SdLora.IO;

namespace SdLora.Checkpoints;

public enum ModelFamily
{
    StableDiffusion1,
    StableDiffusion1Inpainting,
    StableDiffusion2,
    StableDiffusionXL,
    Lora,
    TextualInversion,
    VaeOnly,
    Unknown,
}

public enum CheckpointLayout { LdmSingleFile, DiffusersFolder }

/// <summary>What a checkpoint is, in words, and which parts an SD1 file lacks.</summary>
public sealed record FamilyDetection(ModelFamily Family, string Description, IReadOnlyList<ModelPart> MissingParts)
{
    public bool IsSupported => Family == ModelFamily.StableDiffusion1 && MissingParts.Count == 0;

    /// <summary>Why sdlora cannot use it (null when it can).</summary>
    public string? WhyNot => IsSupported ? null
        : Family == ModelFamily.StableDiffusion1
            ? $"it lacks the {string.Join(" and ", MissingParts.Select(PartName))}; use a complete SD1.x checkpoint (UNet, VAE and text encoder in one file, or a diffusers folder)"
            : Family switch
            {
                ModelFamily.Lora => "it is a LoRA, not a base model; load a base SD1.x checkpoint and apply the LoRA with --lora",
                ModelFamily.TextualInversion => "it is a textual-inversion embedding, not a base model; load a base SD1.x checkpoint",
                ModelFamily.VaeOnly => "it holds only a VAE; load a full SD1.x checkpoint (and pass this file as its VAE where a command offers --vae)",
                _ => "sdlora supports Stable Diffusion 1.x (1.4/1.5 and models fine-tuned from them) only; use an SD1.x checkpoint",
            };

    public static string PartName(ModelPart p) => p switch
    {
        ModelPart.UNet => "UNet (model.diffusion_model.*)",
        ModelPart.Vae => "VAE (first_stage_model.*)",
        _ => "text encoder (cond_stage_model.transformer.*)",
    };
}

/// <summary>
/// Recognises a checkpoint's model family from its tensor names and shapes (single files) or its configs (diffusers
/// folders). v-prediction (SD2 "768-v" and some fine-tunes) cannot be seen in the weights: it comes from a YAML
/// (<c>parameterization: v</c>) or the scheduler config.
/// </summary>
public static class ModelFamilyDetector
{
    private const string U = LdmKeyMap.UNetPrefix;

    public static FamilyDetection DetectSingleFile(ITensorSource source)
    {
        var keys = source.Keys.ToList();
        bool Any(Func<string, bool> f) => keys.Any(f);
        bool Starts(string p) => Any(k => k.StartsWith(p, StringComparison.Ordinal));

        if (Starts("lora_unet_") || Starts("lora_te") || Any(k => k.Contains(".lora_down.", StringComparison.Ordinal) || k.Contains(".lora_up.", StringComparison.Ordinal)
            || k.Contains(".lora_A.", StringComparison.Ordinal) || k.Contains(".lora_B.", StringComparison.Ordinal) || k.Contains(".hada_w1_a", StringComparison.Ordinal)))
            return Found(ModelFamily.Lora, "a LoRA (low-rank adapter) file");
        if (Starts("string_to_param") || keys.Contains("emb_params"))
            return Found(ModelFamily.TextualInversion, "a textual-inversion embedding");
        if (Starts("conditioner.embedders.") || Starts(U + "label_emb."))
            return Found(ModelFamily.StableDiffusionXL, "a Stable Diffusion XL checkpoint (conditioner.embedders.*, label_emb)");
        if (Starts("cond_stage_model.model."))
            return Found(ModelFamily.StableDiffusion2, "a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder cond_stage_model.model.*, 1024-wide cross-attention)");

        bool hasUnet = source.Contains(U + "input_blocks.0.0.weight");
        bool hasVae = Starts(LdmKeyMap.VaePrefix + "encoder.") && Starts(LdmKeyMap.VaePrefix + "decoder.");
        bool hasText = Starts(LdmKeyMap.TextEncoderPrefix);
        if (!hasUnet)
        {
            if ((Starts("encoder.down.") && Starts("decoder.up.")) || (Starts("encoder.down_blocks.") && Starts("decoder.up_blocks.")) || (hasVae && !hasText))
                return Found(ModelFamily.VaeOnly, "a VAE on its own");
            if (source.Contains("conv_in.weight") && Starts("down_blocks.") && Starts("time_embedding."))
                return Found(ModelFamily.Unknown, "a diffusers UNet weight file on its own (not a whole model)");
            return Found(ModelFamily.Unknown, "not a Stable Diffusion checkpoint sdlora recognises (no model.diffusion_model.* UNet)");
        }

        long inChannels = source.ShapeOf(U + "input_blocks.0.0.weight") is { Length: 4 } s ? s[1] : -1;
        int? context = null;
        foreach (var k in keys)
            if (k.StartsWith(U, StringComparison.Ordinal) && k.EndsWith(".attn2.to_k.weight", StringComparison.Ordinal)) { context = (int)source.ShapeOf(k)[1]; break; }
        const string Token = LdmKeyMap.TextEncoderPrefix + "text_model.embeddings.token_embedding.weight";
        const string OldToken = LdmKeyMap.TextEncoderPrefix + "embeddings.token_embedding.weight";
        long? textWidth = source.Contains(Token) ? source.ShapeOf(Token)[1] : source.Contains(OldToken) ? source.ShapeOf(OldToken)[1] : null;

        if (context == 1024 && textWidth is null or 1024)
            return Found(ModelFamily.StableDiffusion2, "a Stable Diffusion 2.x UNet (1024-wide cross-attention)");
        if (context == 2048)
            return Found(ModelFamily.StableDiffusionXL, "a Stable Diffusion XL UNet (2048-wide cross-attention)");
        if (context is { } c && textWidth is { } w && c != w)
            return Found(ModelFamily.Unknown, $"a UNet whose cross-attention width {c} does not match its text encoder width {w}");
        if (inChannels == 9)
            return Found(ModelFamily.StableDiffusion1Inpainting, "a Stable Diffusion 1.x inpainting checkpoint (9 UNet input channels)");
        if (inChannels != 4)
            return Found(ModelFamily.Unknown, $"a UNet with {inChannels} input channels (SD1.x has 4; instruct-pix2pix has 8, inpainting 9)");

        var missing = new List<ModelPart>();
        if (!hasVae) missing.Add(ModelPart.Vae);
        if (!hasText) missing.Add(ModelPart.TextEncoder);
        return new FamilyDetection(ModelFamily.StableDiffusion1, "a Stable Diffusion 1.x checkpoint", missing);
    }

    public static FamilyDetection DetectDiffusersFolder(string dir)
    {
        string index = Path.Combine(dir, "model_index.json");
        string className = "";
        if (File.Exists(index))
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(index));
                if (doc.RootElement.TryGetProperty("_class_name", out var cn) && cn.ValueKind == JsonValueKind.String) className = cn.GetString()!;
            }
            catch (JsonException e) { throw new SdLoraException($"{index}: is not valid JSON ({e.Message.Split('\n')[0]}); re-download the model folder"); }
        }
        if (className.Contains("XL", StringComparison.Ordinal) || Directory.Exists(Path.Combine(dir, "text_encoder_2")))
            return Found(ModelFamily.StableDiffusionXL, "a Stable Diffusion XL diffusers folder (text_encoder_2)");

        var missing = new List<ModelPart>();
        if (!Directory.Exists(Path.Combine(dir, "unet"))) missing.Add(ModelPart.UNet);
        if (!Directory.Exists(Path.Combine(dir, "vae"))) missing.Add(ModelPart.Vae);
        if (!Directory.Exists(Path.Combine(dir, "text_encoder"))) missing.Add(ModelPart.TextEncoder);

        string unetConfig = Path.Combine(dir, "unet", "config.json");
        if (File.Exists(unetConfig))
        {
            int context = 768, inChannels = 4;
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(unetConfig));
                if (doc.RootElement.TryGetProperty("cross_attention_dim", out var ca) && ca.ValueKind == JsonValueKind.Number) context = ca.GetInt32();
                if (doc.RootElement.TryGetProperty("in_channels", out var ic) && ic.ValueKind == JsonValueKind.Number) inChannels = ic.GetInt32();
                if (doc.RootElement.TryGetProperty("addition_embed_type", out var ae) && ae.ValueKind == JsonValueKind.String)
                    return Found(ModelFamily.StableDiffusionXL, "a Stable Diffusion XL diffusers folder (UNet with added text/time embeddings)");
            }
            catch (JsonException e) { throw new SdLoraException($"{unetConfig}: is not valid JSON ({e.Message.Split('\n')[0]}); re-download the model folder"); }
            if (context == 2048) return Found(ModelFamily.StableDiffusionXL, "a Stable Diffusion XL diffusers folder (cross_attention_dim 2048)");
            if (context == 1024) return Found(ModelFamily.StableDiffusion2, "a Stable Diffusion 2.x diffusers folder (cross_attention_dim 1024)");
            if (inChannels == 9) return Found(ModelFamily.StableDiffusion1Inpainting, "a Stable Diffusion 1.x inpainting diffusers folder (9 UNet input channels)");
            if (inChannels != 4) return Found(ModelFamily.Unknown, $"a diffusers folder whose UNet has {inChannels} input channels (SD1.x has 4)");
        }
        else if (!missing.Contains(ModelPart.UNet))
            return Found(ModelFamily.Unknown, "a diffusers folder without unet/config.json");
        if (className.Length > 0 && className != "StableDiffusionPipeline" && !className.StartsWith("StableDiffusion", StringComparison.Ordinal))
            return Found(ModelFamily.Unknown, $"a diffusers folder of a '{className}', not a Stable Diffusion pipeline");
        return new FamilyDetection(ModelFamily.StableDiffusion1, "a Stable Diffusion 1.x diffusers folder", missing);
    }

    /// <summary>The one-line error for a checkpoint sdlora cannot use.</summary>
    public static string UnsupportedMessage(string path, FamilyDetection d) => $"{path}: is {d.Description}; {d.WhyNot}";

    private static FamilyDetection Found(ModelFamily f, string description) => new(f, description, []);
}
