using SdLora.Captioning;
using SdLora.IO;
using TorchSharp;
using Xunit;

namespace SdLora.Tests.Captioning;

[Trait("Category", "Golden")]
public sealed class WordPieceTokenizerGoldenTests
{
    private static WordPieceTokenizer Tokenizer => WordPieceTokenizer.FromFolder(Fixtures.Golden("blip/model"));

    [SkippableFact]
    public void Encode_matches_reference_cases()
    {
        using var doc = Fixtures.Json("blip/tokenizer_cases");
        var tokenizer = Tokenizer;
        foreach (var c in doc.RootElement.GetProperty("encode").EnumerateArray())
        {
            var text = c.GetProperty("text").GetString()!;
            var ids = c.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var tokens = c.GetProperty("tokens").EnumerateArray().Select(e => e.GetString()!).ToArray();
            Assert.Equal(ids, tokenizer.Encode(text));
            Assert.Equal(tokens[1..^1], tokenizer.Tokenize(text));
        }
    }

    [SkippableFact]
    public void Decode_matches_reference_cases()
    {
        using var doc = Fixtures.Json("blip/tokenizer_cases");
        var tokenizer = Tokenizer;
        foreach (var c in doc.RootElement.GetProperty("decode").EnumerateArray())
        {
            var ids = c.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            Assert.Equal(c.GetProperty("skip_special_tokens").GetString(), tokenizer.Decode(ids, skipSpecialTokens: true));
            Assert.Equal(c.GetProperty("keep_special_tokens").GetString(), tokenizer.Decode(ids, skipSpecialTokens: false));
        }
    }

    [SkippableFact]
    public void Special_ids_are_read_from_the_vocab()
    {
        using var doc = Fixtures.Json("blip/tokenizer_cases");
        var s = doc.RootElement.GetProperty("special_ids");
        var tokenizer = Tokenizer;
        Assert.Equal(s.GetProperty("[PAD]").GetInt32(), tokenizer.PadId);
        Assert.Equal(s.GetProperty("[UNK]").GetInt32(), tokenizer.UnkId);
        Assert.Equal(s.GetProperty("[CLS]").GetInt32(), tokenizer.ClsId);
        Assert.Equal(s.GetProperty("[SEP]").GetInt32(), tokenizer.SepId);
        Assert.Equal(s.GetProperty("[MASK]").GetInt32(), tokenizer.MaskId);
        Assert.Equal(s.GetProperty("vocab.txt lines").GetInt32(), tokenizer.VocabCount);
    }

}

public sealed class WordPieceTokenizerTests
{
    private static WordPieceTokenizer Tokenizer => WordPieceTokenizer.FromFolder(Fixtures.CopiedSet("blip/model"));

    // Rules of transformers' BasicTokenizer (the BLIP reference) that Microsoft.ML.Tokenizers' BertTokenizer does
    // not follow (see docs/libraries.md): every ASCII symbol is punctuation, a piece missing from the vocab is
    // [UNK] (never dropped), tabs and Unicode space separators split words, format characters (Cf) are removed.
    [Fact]
    public void Symbols_emoji_and_numerals_missing_from_the_vocab_become_unk_not_nothing()
    {
        Assert.Equal(["[UNK]", "5", "[UNK]", "2", "[UNK]", "[UNK]"], Tokenizer.Tokenize("$5^2`~"));
        Assert.Equal([.. Tokenizer.Tokenize("emoji"), "[UNK]", "dog"], Tokenizer.Tokenize("emoji \U0001F436 dog"));
        Assert.Equal(["[UNK]", "[UNK]", "[UNK]"], Tokenizer.Tokenize("\u216B \u00BD \u00B2"));
    }

    [Fact]
    public void Tab_and_no_break_space_separate_words_and_zero_width_space_is_removed()
    {
        Assert.Equal(["dog", "cat"], Tokenizer.Tokenize("dog\tcat"));
        Assert.Equal(["dog", "cat"], Tokenizer.Tokenize("dog\u00A0cat"));
        Assert.Equal(Tokenizer.Tokenize("dogcat"), Tokenizer.Tokenize("dog\u200Bcat"));
        Assert.Equal(Tokenizer.Tokenize("dog cat"), Tokenizer.Tokenize("dog \u0000\uFFFD cat"));
    }

    [Fact]
    public void Word_longer_than_100_characters_becomes_one_unk()
    {
        var tokenizer = WordPieceTokenizer.FromFolder(Fixtures.CopiedSet("blip/model"));
        Assert.Equal(["a", "[UNK]", "cat"], tokenizer.Tokenize("a " + new string('a', 101) + " cat"));
    }
}

public sealed class BlipCheckpointKeysTests
{
    [Theory]
    [InlineData("visual_encoder.cls_token", "vision_model.embeddings.class_embedding")]
    [InlineData("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding")]
    [InlineData("visual_encoder.patch_embed.proj.weight", "vision_model.embeddings.patch_embedding.weight")]
    [InlineData("visual_encoder.patch_embed.proj.bias", "vision_model.embeddings.patch_embedding.bias")]
    [InlineData("visual_encoder.blocks.0.norm1.weight", "vision_model.encoder.layers.0.layer_norm1.weight")]
    [InlineData("visual_encoder.blocks.11.norm2.bias", "vision_model.encoder.layers.11.layer_norm2.bias")]
    [InlineData("visual_encoder.blocks.3.attn.qkv.weight", "vision_model.encoder.layers.3.self_attn.qkv.weight")]
    [InlineData("visual_encoder.blocks.23.attn.proj.bias", "vision_model.encoder.layers.23.self_attn.projection.bias")]
    [InlineData("visual_encoder.blocks.5.mlp.fc1.weight", "vision_model.encoder.layers.5.mlp.fc1.weight")]
    [InlineData("visual_encoder.blocks.5.mlp.fc2.bias", "vision_model.encoder.layers.5.mlp.fc2.bias")]
    [InlineData("visual_encoder.norm.weight", "vision_model.post_layernorm.weight")]
    [InlineData("text_decoder.bert.encoder.layer.0.crossattention.self.key.weight", "text_decoder.bert.encoder.layer.0.crossattention.self.key.weight")]
    [InlineData("text_decoder.cls.predictions.decoder.weight", "text_decoder.cls.predictions.decoder.weight")]
    [InlineData("text_decoder.bert.embeddings.position_ids", null)]
    [InlineData("vision_proj.weight", null)]
    public void Original_blip_keys_map_to_hugging_face_names(string original, string? expected) =>
        Assert.Equal(expected, BlipCheckpointKeys.ToHuggingFace(original));

    [SkippableFact]
    [Trait("Category", "Golden")]
    public void Renamed_original_checkpoint_loads_into_the_model_and_gives_the_same_logits()
    {
        // Rebuild an original-BLIP-named state dict from the tiny model and load it back through the renaming view.
        using var f = Fixtures.Open("blip/text_decoder");
        var expected = BlipConfig.FromJsonFile(Fixtures.Golden("blip/model/config.json"));
        using var scope = torch.NewDisposeScope();
        using var hf = SafetensorsFile.Open(Fixtures.Golden("blip/model/model.safetensors"));
        var original = hf.Keys.ToDictionary(ToOriginalName, k => hf.Load(k));
        original["text_decoder.bert.embeddings.position_ids"] = torch.arange(expected.Text.MaxPositionEmbeddings).unsqueeze(0);
        var view = BlipCheckpointKeys.HuggingFaceView(new DictionaryTensorSource(original, "model_large_caption.pth"));
        var config = BlipCheckpointKeys.ConfigFromShapes(view, expected.Vision.LayerNormEps);
        // Head counts are not in the shapes.
        Assert.Equal(expected.Vision with { NumAttentionHeads = 0 }, config.Vision with { NumAttentionHeads = 0 });
        Assert.Equal(expected.Text.VocabSize, config.Text.VocabSize);
        Assert.Equal(expected.Text.NumHiddenLayers, config.Text.NumHiddenLayers);
        Assert.Equal(expected.Text.BosTokenId, config.Text.BosTokenId);

        using var model = new BlipForConditionalGeneration(expected);
        BlipCaptioner.LoadWeights(model, view);
        using var noGrad = torch.no_grad();
        Fixtures.AssertClose(f.Load("logits"), model.Logits(f.Load("pixel_values"), f.Load("input_ids"), f.Load("attention_mask")),
            Fixtures.GoldenTolerance("blip/text_decoder", "logits", 1e-4), "logits");
    }

    /// <summary>Hugging Face BLIP key -> the original BLIP (salesforce/kohya) key, the inverse of the loader's renaming.</summary>
    internal static string ToOriginalName(string k)
    {
        var inverse = new Dictionary<string, string>
        {
            ["vision_model.embeddings.class_embedding"] = "visual_encoder.cls_token",
            ["vision_model.embeddings.position_embedding"] = "visual_encoder.pos_embed",
            ["vision_model.embeddings.patch_embedding."] = "visual_encoder.patch_embed.proj.",
            ["vision_model.post_layernorm."] = "visual_encoder.norm.",
        };
        foreach (var (from, to) in inverse) if (k.StartsWith(from)) return to + k[from.Length..];
        return k.Replace("vision_model.encoder.layers.", "visual_encoder.blocks.").Replace("self_attn.qkv", "attn.qkv")
            .Replace("self_attn.projection", "attn.proj").Replace("layer_norm1", "norm1").Replace("layer_norm2", "norm2");
    }

    [Fact]
    public void Original_pth_checkpoint_captions_like_the_hugging_face_folder()
    {
        using var tmp = Fixtures.TempDir();
        foreach (var f in new[] { "config.json", "preprocessor_config.json", "vocab.txt", "tokenizer_config.json" })
            File.Copy(Fixtures.CopiedSet("blip/model/" + f), tmp.File(f));
        using (var hf = SafetensorsFile.Open(Fixtures.CopiedSet("blip/model/model.safetensors")))
        {
            var tensors = hf.Keys.Select(k => (ToOriginalName(k), hf.Load(k))).ToList();
            SdLora.Tests.Checkpoints.TorchZipWriter.WriteStateDict(tmp.File("model_large_caption.pth"), tensors, wrap: true);
            foreach (var (_, t) in tensors) t.Dispose();
        }
        var image = SdLora.Imaging.RgbImage.Load(Fixtures.CopiedSet("blip/image_a.png"));
        var options = new BlipCaptionOptions();
        var expected = BlipCaptioner.Load(Fixtures.CopiedSet("blip/model")).Caption([image], options);
        var actual = BlipCaptioner.Load(tmp.Path).Caption([image], options);
        Assert.Equal(expected, actual);
        Assert.Equal(actual, BlipCaptioner.Load(tmp.File("model_large_caption.pth")).Caption([image], options));

        File.Delete(tmp.File("vocab.txt"));
        var ex = Assert.Throws<SdLoraException>(() => BlipCaptioner.Load(tmp.Path));
        Assert.Contains("vocab.txt", ex.Message);
    }
}
