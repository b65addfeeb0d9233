using System.Globalization;

namespace SdLora.Lora;

/// <summary>
/// A LoRA file and how strongly to apply it: <see cref="Weight"/> for every module (A1111's <c>&lt;lora:name:weight&gt;</c>,
/// the command line's <c>PATH:WEIGHT</c>), and optionally a separate UNet weight (<c>&lt;lora:name:te:unet&gt;</c>);
/// without one the UNet uses <see cref="Weight"/> too. Used by generation and by merging alike.
/// </summary>
public sealed record LoraUse(string Path, double Weight = 1.0, double? UNetWeight = null)
{
    /// <summary>The weight for a module of the UNet (<paramref name="isUNet"/>) or of the text encoder.</summary>
    public double WeightFor(bool isUNet) => isUNet ? UNetWeight ?? Weight : Weight;

    /// <summary>
    /// Parses <c>PATH</c> or <c>PATH:WEIGHT</c>. The part after the last ':' is a weight only when it is a number, so
    /// <c>C:\x.safetensors</c> and other paths with colons work; a weight must be finite.
    /// </summary>
    public static LoraUse Parse(string text)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new SdLoraException("empty LoRA; write PATH or PATH:WEIGHT, e.g. my-lora.safetensors:0.8");
        int colon = text.LastIndexOf(':');
        if (colon > 0 && double.TryParse(text[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var w))
        {
            if (!double.IsFinite(w)) throw new SdLoraException($"LoRA weight in '{text}' is not a finite number; write PATH:0.8");
            return new LoraUse(text[..colon], w);
        }
        return new LoraUse(text);
    }
}
