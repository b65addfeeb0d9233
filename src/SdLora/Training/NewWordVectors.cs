using SdLora.Models;
using SdLora.Pipelines;
using SdLora.Text;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Training;

/// <summary>
/// The trained vectors of a new word (<c>token-string</c>, with <c>sks1</c>, <c>sks2</c>... for more vectors): the words
/// are added to a copy of the tokenizer and their rows are appended after the text encoder's table for the run, so the
/// table's own rows are never written. Textual inversion trains nothing else; a LoRA run with a token string trains them
/// beside the LoRA (pivotal tuning). <see cref="Dispose"/> takes the rows off the text encoder again.
/// </summary>
internal sealed class NewWordVectors : IDisposable
{
    private readonly ClipTextEmbeddings _embeddings;
    private readonly Tensor? _previousRows;
    private readonly Dictionary<string, bool> _captionHasWord = [];
    private bool _attached;

    /// <summary>The model's tokenizer plus the new words.</summary>
    public ClipTokenizer Tokenizer { get; }
    /// <summary><c>[vectors, dim]</c>, fp32, trained.</summary>
    public Parameter Rows { get; }
    /// <summary>The word as it is called in prompts (<c>token-string</c>).</summary>
    public string Word { get; }
    /// <summary>The word spelled as all its vector tokens (<c>sks sks1 sks2</c>).</summary>
    public string SpelledOut { get; }
    /// <summary>Where the vectors started: <c>'dog'</c> or <c>random values</c>.</summary>
    public string StartedFrom { get; }
    private int FirstId { get; }

    private NewWordVectors(StableDiffusionModel model, TrainingConfig c, Action<string> info)
    {
        var words = c.TokenStrings;
        Word = c.TokenString!;
        SpelledOut = string.Join(" ", words);
        _embeddings = model.TextEncoder.text_model.embeddings;
        var table = _embeddings.token_embedding.weight!;
        int vocab = model.TextEncoder.Config.VocabSize;
        if (model.Tokenizer.VocabSize != vocab)
            throw new SdLoraException($"{c.Model}: its tokenizer has {model.Tokenizer.VocabSize} tokens but its text encoder {vocab} rows; new words cannot be added after both");
        Tokenizer = model.Tokenizer.WithAddedTokens(words);
        FirstId = Tokenizer.AddedTokens[words[0].ToLowerInvariant()];

        Tensor init;
        using (torch.no_grad())
        {
            if (c.InitWord is { } word)
            {
                var ids = model.Tokenizer.Encode(word);
                if (ids.Length == 0) throw new SdLoraException($"init-word '{word}' gives no tokens: use an ordinary word close to the subject, e.g. dog") { Setting = "init-word" };
                if (ids.Length > 1 && ids.Length != words.Count)
                    info($"init-word '{word}' is {ids.Length} tokens for {words.Count} vector(s): its tokens are repeated or cut to fit (as kohya does)");
                // Each vector starts as one of the word's token embeddings, cycling through them (kohya).
                var index = torch.tensor(Enumerable.Range(0, words.Count).Select(i => (long)ids[i % ids.Length]).ToArray(), device: table.device);
                init = table.index_select(0, index).to(ScalarType.Float32);
                StartedFrom = $"'{word}'";
            }
            else
            {
                using var g = new Generator((ulong)c.Seed, CPU);
                var std = table.to(ScalarType.Float32).std().item<float>();
                init = (torch.randn([words.Count, table.shape[1]], ScalarType.Float32, CPU, generator: g) * std).to(table.device);
                StartedFrom = "random values";
            }
        }
        Rows = new Parameter(init.detach().clone(), requires_grad: true);
        init.Dispose();
        _previousRows = _embeddings.AddedTokens;
        _embeddings.AddedTokens = Rows;
        _attached = true;
    }

    /// <summary>Adds the words of <paramref name="c"/>'s <c>token-string</c> to <paramref name="model"/> for training.</summary>
    public static NewWordVectors Attach(StableDiffusionModel model, TrainingConfig c, Action<string> info) => new(model, c, info);

    /// <summary>Token ids the new words got (for messages).</summary>
    public string IdRange => $"{FirstId}..{FirstId + Rows.shape[0] - 1}";

    /// <summary>True when <paramref name="caption"/> calls the new word (its text conditioning then needs gradients).</summary>
    public bool InCaption(string caption)
    {
        if (!_captionHasWord.TryGetValue(caption, out var has))
            _captionHasWord[caption] = has = Tokenizer.EncodeForModel(caption).Any(id => id >= FirstId);
        return has;
    }

    /// <summary>The vectors as trained so far, as a prompt would call them (<paramref name="savedPath"/>: the file holding them, if any).</summary>
    public TextualInversionEmbedding Snapshot(string? savedPath) => new(Word, Rows, savedPath);

    /// <summary>Writes the vectors as kohya's embedding file (<c>emb_params</c>), which A1111, ComfyUI and sdlora read by its file name.</summary>
    public void Write(string path, IReadOnlyDictionary<string, string> metadata, ScalarType dtype) =>
        TextualInversionEmbedding.Write(path, Rows, metadata, dtype);

    /// <summary>Copies saved vectors back (resume); refuses another shape.</summary>
    public void Restore(Tensor saved, string path)
    {
        if (!saved.shape.SequenceEqual(Rows.shape))
            throw new SdLoraException($"resume: {path} holds [{string.Join(",", saved.shape)}] vectors, this run trains [{string.Join(",", Rows.shape)}]; resume with the same num-vectors-per-token or start over with overwrite") { Setting = "resume" };
        using var noGrad = torch.no_grad();
        Rows.copy_(saved);
    }

    public void Dispose()
    {
        if (_attached) _embeddings.AddedTokens = _previousRows;
        _attached = false;
        Rows.Dispose();
    }
}
