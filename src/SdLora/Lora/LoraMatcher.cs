namespace SdLora.Lora;

/// <summary>The outcome of pairing a LoRA file's modules with a model's layers.</summary>
public sealed record LoraMatchResult(
    string File,
    IReadOnlyList<(LoraModuleWeights Weights, LoraTarget Target)> Matched,
    IReadOnlyList<string> UnmatchedKeys,
    bool UsedLdmNames)
{
    /// <summary>One line for a warning: count and the first few names; null when everything matched.</summary>
    public string? Warning => UnmatchedKeys.Count == 0 ? null
        : $"{File}: {UnmatchedKeys.Count} LoRA keys match no layer of the model and are ignored (first: {string.Join(", ", UnmatchedKeys.Take(3))})";
}

/// <summary>Pairs LoRA modules with target layers, checking shapes.</summary>
public static class LoraMatcher
{
    /// <summary>
    /// For kohya files written with LDM module paths (<c>lora_unet_input_blocks_1_1_proj_in</c>): maps an LDM UNet module
    /// path (<c>input_blocks.1.1.proj_in</c>, without <c>model.diffusion_model.</c>) to the diffusers module path
    /// (<c>down_blocks.0.attentions.0.proj_in</c>) of SD1.x, or null. A caller matching another UNet layout passes its own.
    /// </summary>
    private static readonly Func<string, string?> Sd1LdmUnetModulePath = p => SdLora.Checkpoints.LdmKeyMap.UnetModulePathLdmToDiffusers(p);

    /// <exception cref="SdLoraException">nothing matches, or a matched module's shapes do not fit its layer.</exception>
    public static LoraMatchResult Match(LoraFile lora, LoraTargetIndex index, Func<string, string?>? ldmUnetModulePath = null)
    {
        ldmUnetModulePath ??= Sd1LdmUnetModulePath;
        var matched = new List<(LoraModuleWeights, LoraTarget)>();
        var unmatched = new List<string>();
        bool usedLdm = false;
        foreach (var m in lora.Modules)
        {
            var target = Resolve(m.Stem, index);
            if (target is null)
            {
                target = index.ByLdmKohyaName(m.Stem, ldmUnetModulePath);
                usedLdm |= target is not null;
            }
            if (target is null) { unmatched.Add(m.DownKey); continue; }
            CheckShapes(lora.Path, m, target);
            matched.Add((m, target));
        }
        unmatched.AddRange(lora.UnknownKeys);
        if (matched.Count == 0)
            throw new SdLoraException($"{lora.Path}: none of its {lora.Modules.Count} LoRA modules matches a layer of the model (first key: '{lora.Modules[0].DownKey}'). Is it a LoRA for another model family?");
        return new LoraMatchResult(lora.Path, matched, unmatched, usedLdm);
    }

    private static LoraTarget? Resolve(string stem, LoraTargetIndex index)
    {
        if (stem.StartsWith("lora_", StringComparison.Ordinal)) return index.ByKohyaName(stem);
        return index.ByPrefixedPath(stem)
               ?? index.ByPrefixedPath(KohyaNames.DiffusersUnetPrefix + stem)
               ?? index.ByPrefixedPath(KohyaNames.DiffusersTextEncoderPrefix + stem);
    }

    private static void CheckShapes(string file, LoraModuleWeights m, LoraTarget t)
    {
        var w = t.WeightShape;
        var down = m.Down.shape;
        var up = m.Up.shape;
        string Fail(string what) => $"{file}: '{m.DownKey}' does not fit layer '{t.PrefixedPath}' (weight [{string.Join(",", w)}]): {what}; the LoRA was made for a different model (SD2/SDXL or another architecture)";
        long inFeatures = down[1], outFeatures = up[0];
        if (outFeatures != w[0]) throw new SdLoraException(Fail($"lora_up has {outFeatures} outputs, the layer {w[0]}"));
        if (inFeatures != w[1]) throw new SdLoraException(Fail($"lora_down has {inFeatures} inputs, the layer {w[1]}"));
        if (w.Length == 2 && down.Length == 4 && (down[2] != 1 || down[3] != 1)) throw new SdLoraException(Fail("a conv LoRA for a linear layer"));
        if (w.Length == 4 && down.Length == 4 && (down[2] != w[2] || down[3] != w[3])) throw new SdLoraException(Fail($"kernel {down[2]}x{down[3]}, the layer's {w[2]}x{w[3]}"));
        if (w.Length == 4 && down.Length == 2 && (w[2] != 1 || w[3] != 1)) throw new SdLoraException(Fail("a linear LoRA for a conv layer with a kernel larger than 1x1"));
    }
}
