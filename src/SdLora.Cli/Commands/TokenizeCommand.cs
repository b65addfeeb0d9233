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
        var embeddingsDir = new Option<string>("--embeddings-dir")
        {
            Description = "textual-inversion embeddings: NAME.pt/.safetensors here counts as its vectors wherever NAME is a word of the prompt",
            DefaultValueFactory = _ => Path.Combine("models", "embeddings"),
        };
        var command = new Command("tokenize", "show a prompt's CLIP token ids and its token count (n/75 as A1111 counts)");
        command.Arguments.Add(text);
        command.Options.Add(json);
        command.Options.Add(embeddingsDir);
        command.SetAction(parse => Run(parse.GetValue(text) ?? "", parse.GetValue(json), cli.Console.Profile.Out.Writer, parse.GetValue(embeddingsDir)));
        return command;
    }

    public sealed record ChunkReport(int[] Ids, string[] Tokens, float[] Weights);
    public sealed record LoraReport(string Name, double Weight, double UnetWeight);
    public sealed record EmbeddingReport(string Name, int Vectors, string? Hash);
    public sealed record Report(string Text, int TokenCount, int TokenLimit, string Count, ChunkReport[] Chunks, LoraReport[] Loras, EmbeddingReport[] Embeddings);

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = false,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    /// <summary>
    /// What the command reports for <paramref name="prompt"/>: per chunk the prompt ids (no BOS/EOS/padding). An
    /// embedding of <paramref name="embeddingsDir"/> named in the prompt counts as its vectors (ids after the
    /// vocabulary, shown as <c>name[i]</c>), as A1111 counts it.
    /// </summary>
    public static Report Analyse(string prompt, string? embeddingsDir = null)
    {
        var tokenizer = ClipTokenizer.Default;
        using var library = new EmbeddingLibrary(embeddingsDir);
        var embeddings = new PromptEmbeddings(library, tokenizer, tokenizer.VocabSize, null);
        var t = PromptChunks.Tokenize(tokenizer, prompt, embeddings: embeddings);
        var chunks = t.Chunks.Select(c => new ChunkReport(
            c.PromptIds, c.PromptIds.Select(embeddings.TokenOf).ToArray(), c.Weights[1..(1 + c.Length)])).ToArray();
        var loras = t.Loras.Select(l => new LoraReport(l.Name, l.Weight, l.UNetWeight)).ToArray();
        var used = embeddings.Used.Select(e => new EmbeddingReport(e.Name, e.VectorCount, e.ShortHash)).ToArray();
        return new Report(t.Text, t.TokenCount, t.TokenLimit, $"{t.TokenCount}/{t.TokenLimit}", chunks, loras, used);
    }

    public static int Run(string prompt, bool json, TextWriter output, string? embeddingsDir = null)
    {
        var report = Analyse(prompt, embeddingsDir);
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
        foreach (var e in report.Embeddings)
            output.WriteLine($"embedding: {e.Name} ({e.Vectors} vector{(e.Vectors == 1 ? "" : "s")})");
        output.WriteLine($"tokens: {report.Count}");
        return 0;
    }
}
