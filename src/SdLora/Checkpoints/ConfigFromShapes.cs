using System.Text.RegularExpressions;
using SdLora.IO;
using SdLora.Models;

namespace SdLora.Checkpoints;

/// <summary>
/// Infers model configs from the tensor shapes of an LDM single-file checkpoint. What shapes cannot tell
/// (attention heads, sample sizes, group counts) gets SD1.x's values: UNet 8 heads, CLIP heads = hidden / 64.
/// An LDM YAML, when given, wins over these guesses.
/// </summary>
public static partial class ConfigFromShapes
{
    private const string U = LdmKeyMap.UNetPrefix;
    private const string V = LdmKeyMap.VaePrefix;

    public static UNetConfig UNet(ITensorSource ldm)
    {
        long[] Shape(string k) => ldm.Contains(U + k) ? ldm.ShapeOf(U + k)
            : throw new SdLoraException($"{ldm.Description}: has no '{U + k}', so its UNet layout cannot be inferred; set config to its LDM YAML");
        var convIn = Shape("input_blocks.0.0.weight");
        var convOut = Shape("out.2.weight");
        var inputIndices = new SortedSet<int>();
        var ops = new SortedSet<int>();
        foreach (var key in ldm.Keys)
        {
            if (!key.StartsWith(U + "input_blocks.", StringComparison.Ordinal)) continue;
            var m = InputBlockIndex().Match(key, U.Length);
            if (!m.Success) continue;
            int k = int.Parse(m.Groups[1].Value);
            inputIndices.Add(k);
            if (key.EndsWith(".0.op.weight", StringComparison.Ordinal)) ops.Add(k);
        }
        int layers = ops.Count > 0 ? ops.Min - 1 : inputIndices.Max;
        int levels = ops.Count + 1;
        if (layers < 1) throw new SdLoraException($"{ldm.Description}: its UNet input blocks do not follow the SD1 layout; set config to its LDM YAML");
        int per = layers + 1;
        var channels = new int[levels];
        var down = new string[levels];
        var up = new string[levels];
        bool linear = false;
        int? context = null;
        for (int i = 0; i < levels; i++)
        {
            channels[i] = (int)Shape($"input_blocks.{1 + i * per}.0.out_layers.3.weight")[0];
            var proj = U + $"input_blocks.{1 + i * per}.1.proj_in.weight";
            down[i] = ldm.Contains(proj) ? "CrossAttnDownBlock2D" : "DownBlock2D";
            if (ldm.Contains(proj)) linear = ldm.ShapeOf(proj).Length == 2;
            up[i] = ldm.Contains(U + $"output_blocks.{i * per}.1.proj_in.weight") ? "CrossAttnUpBlock2D" : "UpBlock2D";
        }
        foreach (var key in ldm.Keys)
            if (key.StartsWith(U, StringComparison.Ordinal) && key.EndsWith(".attn2.to_k.weight", StringComparison.Ordinal)) { context = (int)ldm.ShapeOf(key)[1]; break; }
        return new UNetConfig(
            InChannels: (int)convIn[1],
            OutChannels: (int)convOut[0],
            BlockOutChannels: channels,
            DownBlockTypes: down,
            UpBlockTypes: up,
            LayersPerBlock: layers,
            CrossAttentionDim: context ?? 768,
            AttentionHeadDim: Enumerable.Repeat(8, levels).ToArray(),
            UseLinearProjection: linear);
    }

    public static AutoencoderKLConfig Vae(ITensorSource ldm)
    {
        long[] Shape(string k) => ldm.Contains(V + k) ? ldm.ShapeOf(V + k)
            : throw new SdLoraException($"{ldm.Description}: has no '{V + k}', so its VAE layout cannot be inferred; set config to its LDM YAML");
        var levels = new SortedSet<int>();
        var blocks = new SortedSet<int>();
        foreach (var key in ldm.Keys)
        {
            var m = VaeDownBlock().Match(key);
            if (!m.Success) continue;
            levels.Add(int.Parse(m.Groups[1].Value));
            if (m.Groups[1].Value == "0") blocks.Add(int.Parse(m.Groups[2].Value));
        }
        if (levels.Count == 0) throw new SdLoraException($"{ldm.Description}: has no VAE encoder blocks (first_stage_model.encoder.down.*); the file lacks the VAE");
        return new AutoencoderKLConfig(
            InChannels: (int)Shape("encoder.conv_in.weight")[1],
            OutChannels: (int)Shape("decoder.conv_out.weight")[0],
            LatentChannels: (int)Shape("post_quant_conv.weight")[0],
            BlockOutChannels: levels.Select(i => (int)Shape($"encoder.down.{i}.block.0.conv2.weight")[0]).ToArray(),
            LayersPerBlock: blocks.Count);
    }

    /// <summary>CLIP text config from a source in transformers names (<c>text_model.*</c>).</summary>
    public static ClipTextConfig ClipText(ITensorSource text)
    {
        long[] Shape(string k) => text.Contains(k) ? text.ShapeOf(k)
            : throw new SdLoraException($"{text.Description}: has no text-encoder tensor '{k}'; the file lacks the CLIP text encoder");
        var token = Shape("text_model.embeddings.token_embedding.weight");
        var pos = Shape("text_model.embeddings.position_embedding.weight");
        var fc1 = Shape("text_model.encoder.layers.0.mlp.fc1.weight");
        int layers = text.Keys.Select(k => TextLayer().Match(k)).Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value)).DefaultIfEmpty(-1).Max() + 1;
        int hidden = (int)token[1];
        return new ClipTextConfig(
            VocabSize: (int)token[0],
            HiddenSize: hidden,
            IntermediateSize: (int)fc1[0],
            NumHiddenLayers: layers,
            NumAttentionHeads: Math.Max(1, hidden / 64),
            MaxPositionEmbeddings: (int)pos[0]);
    }

    [GeneratedRegex(@"\Ginput_blocks\.(\d+)\.")]
    private static partial Regex InputBlockIndex();
    [GeneratedRegex(@"^first_stage_model\.encoder\.down\.(\d+)\.block\.(\d+)\.")]
    private static partial Regex VaeDownBlock();
    [GeneratedRegex(@"^text_model\.encoder\.layers\.(\d+)\.")]
    private static partial Regex TextLayer();
}
