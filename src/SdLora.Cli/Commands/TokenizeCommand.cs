using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization;
using SdLora.Text;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora tokenize "TEXT" [--json]</c>: CLIP token ids of a prompt and its token count as A1111 shows it.</summary>
public static class TokenizeCommand
{
    public static Command Create(CliContext cli)
    {
        var text = new Argument<string>("text") { Description = "the prompt (A1111 syntax: (word:1.2), [word], BREAK, <lora:name:0.8>)" };
        var json = new Option<bool>("--json") { Description = "print the result as JSON" };
        var command = new Command("tokenize", "show a prompt's CLIP token ids and its token count (n/75 as A1111 counts)");
        command.Arguments.Add(text);
        command.Options.Add(json);
        command.SetAction(parse => Run(parse.GetValue(text) ?? "", parse.GetValue(json), cli.Console.Profile.Out.Writer));
        return command;
    }

    public sealed record ChunkReport(int[] Ids, string[] Tokens, float[] Weights);
    public sealed record LoraReport(string Name, double Weight, double UnetWeight);
    public sealed record Report(string Text, int TokenCount, int TokenLimit, string Count, ChunkReport[] Chunks, LoraReport[] Loras);

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = false,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    /// <summary>What the command reports for <paramref name="prompt"/>: per chunk the prompt ids (no BOS/EOS/padding).</summary>
    public static Report Analyse(string prompt)
    {
        var tokenizer = ClipTokenizer.Default;
        var t = PromptChunks.Tokenize(tokenizer, prompt);
        var chunks = t.Chunks.Select(c => new ChunkReport(
            c.PromptIds, c.PromptIds.Select(tokenizer.TokenOf).ToArray(), c.Weights[1..(1 + c.Length)])).ToArray();
        var loras = t.Loras.Select(l => new LoraReport(l.Name, l.Weight, l.UNetWeight)).ToArray();
        return new Report(t.Text, t.TokenCount, t.TokenLimit, $"{t.TokenCount}/{t.TokenLimit}", chunks, loras);
    }

    public static int Run(string prompt, bool json, TextWriter output)
    {
        var report = Analyse(prompt);
        if (json)
        {
            output.WriteLine(JsonSerializer.Serialize(report, Json));
            return 0;
        }
        for (int i = 0; i < report.Chunks.Length; i++)
        {
            var c = report.Chunks[i];
            string label = report.Chunks.Length > 1 ? $"chunk {i + 1} " : "";
            output.WriteLine($"{label}ids: {string.Join(' ', c.Ids)}");
            output.WriteLine($"{label}bpe: {string.Join(' ', c.Tokens.Zip(c.Weights, (tok, w) => w == 1f ? tok : $"{tok}({w:0.###})"))}");
        }
        foreach (var l in report.Loras)
            output.WriteLine(l.UnetWeight == l.Weight ? $"lora: {l.Name} ({l.Weight:0.###})" : $"lora: {l.Name} (te {l.Weight:0.###}, unet {l.UnetWeight:0.###})");
        output.WriteLine($"tokens: {report.Count}");
        return 0;
    }
}
