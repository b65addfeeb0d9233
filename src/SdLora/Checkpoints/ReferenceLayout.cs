using SdLora.Models;

namespace SdLora.Checkpoints;

/// <summary>
/// The parameter names and shapes that the reference implementations (diffusers UNet2DConditionModel /
/// AutoencoderKL, transformers CLIPTextModel) have for a config — what a complete checkpoint must contain.
/// Used to check files, to count parameters, and to write synthetic full-size checkpoints for benchmarks.
/// </summary>
public static class ReferenceLayout
{
    public static IEnumerable<(string Name, long[] Shape)> Of(ModelPart part, UNetConfig unet, AutoencoderKLConfig vae, ClipTextConfig clip) => part switch
    {
        ModelPart.UNet => UNet(unet),
        ModelPart.Vae => Vae(vae),
        _ => ClipText(clip),
    };

    public static IEnumerable<(string Name, long[] Shape)> UNet(UNetConfig c)
    {
        var ch = c.Channels;
        int n = ch.Length, L = c.LayersPerBlock, temb = 4 * ch[0];
        var list = new List<(string, long[])>();
        Conv(list, "conv_in", ch[0], c.InChannels, 3);
        Linear(list, "time_embedding.linear_1", temb, ch[0]);
        Linear(list, "time_embedding.linear_2", temb, temb);
        int prev = ch[0];
        for (int i = 0; i < n; i++)
        {
            int outC = ch[i];
            for (int j = 0; j < L; j++)
            {
                Resnet(list, $"down_blocks.{i}.resnets.{j}", j == 0 ? prev : outC, outC, temb);
                if (c.DownBlocks[i].Contains("CrossAttn")) Transformer(list, $"down_blocks.{i}.attentions.{j}", outC, c);
            }
            if (i < n - 1) Conv(list, $"down_blocks.{i}.downsamplers.0.conv", outC, outC, 3);
            prev = outC;
        }
        Resnet(list, "mid_block.resnets.0", ch[^1], ch[^1], temb);
        Transformer(list, "mid_block.attentions.0", ch[^1], c);
        Resnet(list, "mid_block.resnets.1", ch[^1], ch[^1], temb);
        var rev = ch.Reverse().ToArray();
        int prevOut = rev[0];
        for (int i = 0; i < n; i++)
        {
            int outC = rev[i], inC = rev[Math.Min(i + 1, n - 1)];
            for (int j = 0; j <= L; j++)
            {
                int skip = j == L ? inC : outC;
                int resIn = j == 0 ? prevOut : outC;
                Resnet(list, $"up_blocks.{i}.resnets.{j}", resIn + skip, outC, temb);
                if (c.UpBlocks[i].Contains("CrossAttn")) Transformer(list, $"up_blocks.{i}.attentions.{j}", outC, c);
            }
            if (i < n - 1) Conv(list, $"up_blocks.{i}.upsamplers.0.conv", outC, outC, 3);
            prevOut = outC;
        }
        Norm(list, "conv_norm_out", ch[0]);
        Conv(list, "conv_out", c.OutChannels, ch[0], 3);
        return list;
    }

    public static IEnumerable<(string Name, long[] Shape)> Vae(AutoencoderKLConfig c)
    {
        var ch = c.Channels;
        int n = ch.Length, L = c.LayersPerBlock, z = c.LatentChannels;
        var list = new List<(string, long[])>();
        Conv(list, "encoder.conv_in", ch[0], c.InChannels, 3);
        int prev = ch[0];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < L; j++) Resnet(list, $"encoder.down_blocks.{i}.resnets.{j}", j == 0 ? prev : ch[i], ch[i], null);
            if (i < n - 1) Conv(list, $"encoder.down_blocks.{i}.downsamplers.0.conv", ch[i], ch[i], 3);
            prev = ch[i];
        }
        VaeMid(list, "encoder.mid_block", ch[^1]);
        Norm(list, "encoder.conv_norm_out", ch[^1]);
        Conv(list, "encoder.conv_out", 2 * z, ch[^1], 3);
        Conv(list, "quant_conv", 2 * z, 2 * z, 1);
        Conv(list, "post_quant_conv", z, z, 1);
        Conv(list, "decoder.conv_in", ch[^1], z, 3);
        VaeMid(list, "decoder.mid_block", ch[^1]);
        var rev = ch.Reverse().ToArray();
        prev = rev[0];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j <= L; j++) Resnet(list, $"decoder.up_blocks.{i}.resnets.{j}", j == 0 ? prev : rev[i], rev[i], null);
            if (i < n - 1) Conv(list, $"decoder.up_blocks.{i}.upsamplers.0.conv", rev[i], rev[i], 3);
            prev = rev[i];
        }
        Norm(list, "decoder.conv_norm_out", ch[0]);
        Conv(list, "decoder.conv_out", c.OutChannels, ch[0], 3);
        return list;
    }

    public static IEnumerable<(string Name, long[] Shape)> ClipText(ClipTextConfig c)
    {
        int h = c.HiddenSize;
        var list = new List<(string, long[])>
        {
            ("text_model.embeddings.token_embedding.weight", [c.VocabSize, h]),
            ("text_model.embeddings.position_embedding.weight", [c.MaxPositionEmbeddings, h]),
        };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            var p = $"text_model.encoder.layers.{i}";
            foreach (var proj in new[] { "q_proj", "k_proj", "v_proj", "out_proj" }) Linear(list, $"{p}.self_attn.{proj}", h, h);
            Norm(list, $"{p}.layer_norm1", h);
            Linear(list, $"{p}.mlp.fc1", c.IntermediateSize, h);
            Linear(list, $"{p}.mlp.fc2", h, c.IntermediateSize);
            Norm(list, $"{p}.layer_norm2", h);
        }
        Norm(list, "text_model.final_layer_norm", h);
        return list;
    }

    private static void Conv(List<(string, long[])> l, string name, int outC, int inC, int k)
    {
        l.Add((name + ".weight", [outC, inC, k, k]));
        l.Add((name + ".bias", [outC]));
    }

    private static void Linear(List<(string, long[])> l, string name, int outF, int inF, bool bias = true)
    {
        l.Add((name + ".weight", [outF, inF]));
        if (bias) l.Add((name + ".bias", [outF]));
    }

    private static void Norm(List<(string, long[])> l, string name, int c)
    {
        l.Add((name + ".weight", [c]));
        l.Add((name + ".bias", [c]));
    }

    private static void Resnet(List<(string, long[])> l, string p, int inC, int outC, int? temb)
    {
        Norm(l, p + ".norm1", inC);
        Conv(l, p + ".conv1", outC, inC, 3);
        if (temb is { } t) Linear(l, p + ".time_emb_proj", outC, t);
        Norm(l, p + ".norm2", outC);
        Conv(l, p + ".conv2", outC, outC, 3);
        if (inC != outC) Conv(l, p + ".conv_shortcut", outC, inC, 1);
    }

    private static void Transformer(List<(string, long[])> l, string p, int c, UNetConfig cfg)
    {
        Norm(l, p + ".norm", c);
        if (cfg.UseLinearProjection) Linear(l, p + ".proj_in", c, c); else Conv(l, p + ".proj_in", c, c, 1);
        var b = p + ".transformer_blocks.0";
        Norm(l, b + ".norm1", c);
        Linear(l, b + ".attn1.to_q", c, c, bias: false);
        Linear(l, b + ".attn1.to_k", c, c, bias: false);
        Linear(l, b + ".attn1.to_v", c, c, bias: false);
        Linear(l, b + ".attn1.to_out.0", c, c);
        Norm(l, b + ".norm2", c);
        Linear(l, b + ".attn2.to_q", c, c, bias: false);
        Linear(l, b + ".attn2.to_k", c, cfg.CrossAttentionDim, bias: false);
        Linear(l, b + ".attn2.to_v", c, cfg.CrossAttentionDim, bias: false);
        Linear(l, b + ".attn2.to_out.0", c, c);
        Norm(l, b + ".norm3", c);
        Linear(l, b + ".ff.net.0.proj", 8 * c, c);
        Linear(l, b + ".ff.net.2", c, 4 * c);
        if (cfg.UseLinearProjection) Linear(l, p + ".proj_out", c, c); else Conv(l, p + ".proj_out", c, c, 1);
    }

    private static void VaeMid(List<(string, long[])> l, string p, int c)
    {
        Resnet(l, p + ".resnets.0", c, c, null);
        Norm(l, p + ".attentions.0.group_norm", c);
        Linear(l, p + ".attentions.0.to_q", c, c);
        Linear(l, p + ".attentions.0.to_k", c, c);
        Linear(l, p + ".attentions.0.to_v", c, c);
        Linear(l, p + ".attentions.0.to_out.0", c, c);
        Resnet(l, p + ".resnets.1", c, c, null);
    }
}
