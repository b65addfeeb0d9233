using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>A container module so tests can build module trees with the reference (diffusers/transformers) names.</summary>
internal sealed class Node : nn.Module<Tensor, Tensor>
{
    public Node() : base("node") { }
    public override Tensor forward(Tensor x) => x;
    public void Add(string name, nn.Module child) => register_module(name, child);
}

internal static class FakeModels
{
    /// <summary>Builds a tree with an adaptable layer at each given path.</summary>
    public static Node Tree(IEnumerable<(string Path, nn.Module Layer)> layers)
    {
        var root = new Node();
        var nodes = new Dictionary<string, Node> { [""] = root };
        foreach (var (path, layer) in layers)
        {
            var parts = path.Split('.');
            var parent = root;
            for (int i = 0; i < parts.Length - 1; i++)
            {
                var p = string.Join('.', parts[..(i + 1)]);
                if (!nodes.TryGetValue(p, out var n)) { n = new Node(); parent.Add(parts[i], n); nodes[p] = n; }
                parent = n;
            }
            parent.Add(parts[^1], layer);
        }
        return root;
    }

    /// <summary>A tree mirroring every 2-D/4-D weight of a checkpoint file (norms and embeddings left out), weights loaded.</summary>
    public static Node FromCheckpoint(string file)
    {
        using var f = SafetensorsFile.Open(file);
        var layers = new List<(string, nn.Module)>();
        foreach (var e in f.Entries)
        {
            if (!e.Name.EndsWith(".weight") || e.Name.Contains("norm") || e.Name.Contains("embedding")) continue;
            var path = e.Name[..^".weight".Length];
            bool hasBias = f.Contains(path + ".bias");
            nn.Module layer = e.Shape.Length == 2 ? new AdaptableLinear(e.Shape[1], e.Shape[0], hasBias)
                : e.Shape.Length == 4 ? new AdaptableConv2d(e.Shape[1], e.Shape[0], (int)e.Shape[2], padding: (int)e.Shape[2] / 2, hasBias: hasBias)
                : null!;
            if (layer is null) continue;
            using (torch.no_grad())
            {
                var w = layer.named_parameters().First(p => p.name == "weight").parameter;
                w.copy_(f.Load(e.Name, ScalarType.Float32));
            }
            layers.Add((path, layer));
        }
        return Tree(layers);
    }

    /// <summary>A small UNet/text-encoder-like pair with the names LoRA rules look for.</summary>
    public static (Node Unet, Node TextEncoder) Small()
    {
        torch.manual_seed(1);
        var unet = Tree([
            ("down_blocks.0.attentions.0.proj_in", new AdaptableConv2d(8, 8, 1)),
            ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", new AdaptableLinear(8, 8, hasBias: false)),
            ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", new AdaptableLinear(8, 8, hasBias: false)),
            ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v", new AdaptableLinear(8, 8, hasBias: false)),
            ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", new AdaptableLinear(8, 8)),
            ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", new AdaptableLinear(6, 8, hasBias: false)),
            ("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", new AdaptableLinear(8, 16)),
            ("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2", new AdaptableLinear(8, 8)),
            ("down_blocks.0.attentions.0.proj_out", new AdaptableConv2d(8, 8, 1)),
            ("down_blocks.0.resnets.0.conv1", new AdaptableConv2d(8, 8, 3, padding: 1)),
            ("down_blocks.0.resnets.0.time_emb_proj", new AdaptableLinear(12, 8)),
            ("down_blocks.0.downsamplers.0.conv", new AdaptableConv2d(8, 8, 3, stride: 2, padding: 1)),
            ("conv_in", new AdaptableConv2d(4, 8, 3, padding: 1)),
        ]);
        var te = Tree([
            ("text_model.encoder.layers.0.self_attn.q_proj", new AdaptableLinear(6, 6)),
            ("text_model.encoder.layers.0.self_attn.out_proj", new AdaptableLinear(6, 6)),
            ("text_model.encoder.layers.0.mlp.fc1", new AdaptableLinear(6, 10)),
        ]);
        return (unet, te);
    }

    public static T Layer<T>(nn.Module root, string path) where T : nn.Module =>
        (T)root.named_modules().First(m => m.name == path).module;
}
