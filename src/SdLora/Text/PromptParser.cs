using System.Globalization;
using System.Text.RegularExpressions;

namespace SdLora.Text;

/// <summary>
/// A <c>&lt;lora:NAME:WEIGHT&gt;</c> tag from a prompt. <see cref="Weight"/> is the text-encoder multiplier (and the
/// UNet's unless a third number or <c>unet=</c> sets it), as in A1111: <c>&lt;lora:name&gt;</c> = 1.0,
/// <c>&lt;lora:name:0.7&gt;</c>, <c>&lt;lora:name:0.7:0.5&gt;</c>, <c>&lt;lora:name:te=0.7:unet=0.5&gt;</c>.
/// </summary>
public sealed record LoraTag(string Name, double Weight, double? UNetWeightOverride = null)
{
    public double TextEncoderWeight => Weight;
    public double UNetWeight => UNetWeightOverride ?? Weight;
}

/// <summary>A run of prompt text with its attention weight, or a <c>BREAK</c> (start a new 75-token chunk).</summary>
public sealed record PromptSegment(string Text, double Weight, bool IsBreak = false)
{
    public static PromptSegment Break { get; } = new("BREAK", -1, true);
}

/// <summary>A prompt split into its LoRA tags and weighted text segments.</summary>
public sealed record ParsedPrompt(string Text, IReadOnlyList<PromptSegment> Segments, IReadOnlyList<LoraTag> Loras);

/// <summary>
/// AUTOMATIC1111's prompt syntax: <c>(text)</c> multiplies attention by 1.1, <c>[text]</c> divides it by 1.1,
/// <c>(text:1.3)</c> multiplies it by 1.3, brackets nest and multiply, <c>\(</c> <c>\)</c> <c>\[</c> <c>\]</c>
/// <c>\\</c> are literal characters, <c>BREAK</c> (a separate word, upper case) starts a new chunk, and
/// <c>&lt;lora:NAME:WEIGHT&gt;</c> tags are taken out of the text.
/// Malformed input is read the way A1111 reads it: brackets left open apply to the end of the prompt, a closing
/// bracket without an opening one is literal text, <c>(a:1.2)</c> without a matching <c>(</c> is literal text.
/// </summary>
public static class PromptParser
{
    public const double RoundBracketMultiplier = 1.1;
    public const double SquareBracketMultiplier = 1 / 1.1;

    // A1111's extra-network tag: <type:arg:arg...>; every such tag is removed from the prompt, only lora ones are kept.
    private static readonly Regex ExtraNetworkTag = new(@"<(\w+):([^>]+)>", RegexOptions.CultureInvariant);

    // The attention tokens, in A1111's priority order: escapes, openers, "(...:weight)" closers, closers, plain text, ':'.
    private static readonly Regex AttentionToken = new(
        @"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:",
        RegexOptions.CultureInvariant);

    private static readonly Regex BreakKeyword = new(@"\s*\bBREAK\b\s*", RegexOptions.Singleline | RegexOptions.CultureInvariant);

    /// <summary>LoRA tags removed, then attention parsed.</summary>
    public static ParsedPrompt Parse(string prompt)
    {
        var (text, loras) = ExtractLoraTags(prompt);
        return new ParsedPrompt(text, ParseAttention(text), loras);
    }

    /// <summary>
    /// Removes every <c>&lt;type:args&gt;</c> extra-network tag (as A1111 does) and returns the <c>lora</c> (and
    /// <c>lyco</c>) ones. Run this before encoding so the LoRAs can be applied to the text encoder first.
    /// </summary>
    public static (string Text, IReadOnlyList<LoraTag> Loras) ExtractLoraTags(string prompt)
    {
        var loras = new List<LoraTag>();
        var text = ExtraNetworkTag.Replace(prompt, m =>
        {
            var kind = m.Groups[1].Value;
            if (kind is "lora" or "lyco") loras.Add(ParseLoraTag(m.Value, m.Groups[2].Value));
            return "";
        });
        return (text, loras);
    }

    private static LoraTag ParseLoraTag(string tag, string args)
    {
        var positional = new List<string>();
        var named = new Dictionary<string, string>();
        foreach (var item in args.Split(':'))
        {
            int eq = item.IndexOf('=');
            if (eq >= 0) named[item[..eq].Trim()] = item[(eq + 1)..];
            else positional.Add(item);
        }
        var name = positional.Count > 0 ? positional[0].Trim() : "";
        if (name.Length == 0)
            throw new SdLoraException($"prompt tag '{tag}' has no LoRA name; write <lora:NAME> or <lora:NAME:WEIGHT>");
        double Number(string value) =>
            double.TryParse(value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var w) && double.IsFinite(w) ? w
                : throw new SdLoraException($"prompt tag '{tag}' has weight '{value}', which is not a number; write e.g. <lora:{name}:0.8>");
        double te = positional.Count > 1 ? Number(positional[1]) : 1.0;
        if (named.TryGetValue("te", out var teText)) te = Number(teText);
        double? unet = positional.Count > 2 ? Number(positional[2]) : null;
        if (named.TryGetValue("unet", out var unetText)) unet = Number(unetText);
        return new LoraTag(name, te, unet);
    }

    /// <summary>
    /// A1111's <c>parse_prompt_attention</c>: the text as segments with their weights; neighbouring segments with
    /// equal weights are joined; an empty prompt gives one empty segment of weight 1.
    /// </summary>
    public static IReadOnlyList<PromptSegment> ParseAttention(string text)
    {
        var result = new List<(string Text, double Weight, bool IsBreak)>();
        var roundOpen = new Stack<int>();
        var squareOpen = new Stack<int>();

        void MultiplyFrom(int start, double multiplier)
        {
            for (int p = start; p < result.Count; p++)
                result[p] = (result[p].Text, result[p].Weight * multiplier, result[p].IsBreak);
        }

        foreach (Match m in AttentionToken.Matches(text))
        {
            var token = m.Value;
            var weight = m.Groups[1];
            if (token.StartsWith('\\')) result.Add((token[1..], 1.0, false));
            else if (token == "(") roundOpen.Push(result.Count);
            else if (token == "[") squareOpen.Push(result.Count);
            else if (weight.Success && roundOpen.Count > 0) MultiplyFrom(roundOpen.Pop(), ParseWeight(weight.Value, text));
            else if (token == ")" && roundOpen.Count > 0) MultiplyFrom(roundOpen.Pop(), RoundBracketMultiplier);
            else if (token == "]" && squareOpen.Count > 0) MultiplyFrom(squareOpen.Pop(), SquareBracketMultiplier);
            else
            {
                var parts = BreakKeyword.Split(token);
                for (int i = 0; i < parts.Length; i++)
                {
                    if (i > 0) result.Add(("BREAK", -1, true));
                    result.Add((parts[i], 1.0, false));
                }
            }
        }
        // Brackets never closed apply to the rest of the prompt (A1111 walks them bottom of the stack first).
        foreach (var start in roundOpen.Reverse()) MultiplyFrom(start, RoundBracketMultiplier);
        foreach (var start in squareOpen.Reverse()) MultiplyFrom(start, SquareBracketMultiplier);

        if (result.Count == 0) result.Add(("", 1.0, false));
        var merged = new List<PromptSegment>();
        foreach (var (segText, segWeight, isBreak) in result)
        {
            if (isBreak) { merged.Add(PromptSegment.Break); continue; }
            if (merged.Count > 0 && !merged[^1].IsBreak && merged[^1].Weight == segWeight)
                merged[^1] = merged[^1] with { Text = merged[^1].Text + segText };
            else
                merged.Add(new PromptSegment(segText, segWeight));
        }
        return merged;
    }

    private static double ParseWeight(string value, string prompt) =>
        double.TryParse(value, NumberStyles.AllowLeadingSign | NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var w)
            ? w
            : throw new SdLoraException($"prompt '{Shorten(prompt)}': attention weight ':{value})' is not a number; write e.g. (word:1.2)");

    private static string Shorten(string s) => s.Length <= 60 ? s : s[..57] + "...";
}
