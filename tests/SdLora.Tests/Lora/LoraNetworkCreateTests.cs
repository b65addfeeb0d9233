using SdLora.Lora;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>Which layers a new network adapts, with which rank and alpha, per <see cref="LoraNetworkOptions"/>.</summary>
public class LoraNetworkCreateTests
{
    private const string Block = "down_blocks.0.attentions.0.transformer_blocks.0.";

    private static Dictionary<string, LoraModule> ByName(LoraNetwork n) => n.Modules.ToDictionary(m => m.LoraName);

    [Fact]
    public void Conv_rank_and_alpha_apply_to_kernels_larger_than_1x1_only()
    {
        var (unet, te) = FakeModels.Small();
        using var net = LoraNetwork.Create(unet, te, new LoraNetworkOptions
        {
            Rank = 4, Alpha = 3, ConvRank = 2, ConvAlpha = 0.5, UnetTargets = LoraUnetTargets.KohyaDefault | LoraUnetTargets.Convs,
        });
        var m = ByName(net);

        Assert.Equal((2, 0.5), (m["lora_unet_down_blocks_0_resnets_0_conv1"].Rank, m["lora_unet_down_blocks_0_resnets_0_conv1"].Alpha));
        Assert.Equal((2, 0.5), (m["lora_unet_down_blocks_0_downsamplers_0_conv"].Rank, m["lora_unet_down_blocks_0_downsamplers_0_conv"].Alpha));
        Assert.Equal((4, 3.0), (m["lora_unet_down_blocks_0_attentions_0_proj_in"].Rank, m["lora_unet_down_blocks_0_attentions_0_proj_in"].Alpha)); // 1x1 conv
        Assert.Equal((4, 3.0), (m["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].Rank, m["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].Alpha));
        Assert.Equal((4, 3.0), (m["lora_te_text_model_encoder_layers_0_mlp_fc1"].Rank, m["lora_te_text_model_encoder_layers_0_mlp_fc1"].Alpha));
        Assert.DoesNotContain("lora_unet_conv_in", m.Keys); // not a LoRA target in kohya's network either
        // Without a conv rank, 3x3 convs take the network's rank and alpha.
        using var plain = LoraNetwork.Create(unet, te, new LoraNetworkOptions { Rank = 4, Alpha = 3, UnetTargets = LoraUnetTargets.Convs, TrainTextEncoder = false });
        Assert.All(plain.Modules, x => Assert.Equal((4, 3.0), (x.Rank, x.Alpha)));
        Assert.Equal(3, plain.Modules.Count); // conv1, time_emb_proj, the downsampler: resnets and samplers, nothing else
    }

    [Fact]
    public void Each_part_and_group_can_be_left_out()
    {
        var (unet, te) = FakeModels.Small();
        using (var unetOnly = LoraNetwork.Create(unet, te, new LoraNetworkOptions { TrainTextEncoder = false }))
        {
            Assert.Empty(unetOnly.TextEncoderModules);
            Assert.Equal(5, unetOnly.UnetModules.Count()); // attention: q, k, v, out of attn1, k of attn2
        }
        using (var teOnly = LoraNetwork.Create(unet, te, new LoraNetworkOptions { TrainUnet = false }))
        {
            Assert.Empty(teOnly.UnetModules);
            Assert.Equal(["lora_te_text_model_encoder_layers_0_mlp_fc1", "lora_te_text_model_encoder_layers_0_self_attn_out_proj", "lora_te_text_model_encoder_layers_0_self_attn_q_proj"],
                teOnly.Modules.Select(x => x.LoraName));
        }
        using (var noMlp = LoraNetwork.Create(unet, te, new LoraNetworkOptions { TrainUnet = false, TextEncoderMlp = false }))
            Assert.DoesNotContain(noMlp.Modules, x => x.LoraName.Contains("mlp"));

        var e = Assert.Throws<SdLoraException>(() => LoraNetwork.Create(unet, te, new LoraNetworkOptions { TrainUnet = false, TrainTextEncoder = false }));
        Assert.Equal("no layer of the model matches the LoRA targets chosen; enable the UNet or the text encoder, or pick other targets", e.Message);
        Assert.Throws<SdLoraException>(() => LoraNetwork.Create(unet, null, new LoraNetworkOptions { UnetTargets = LoraUnetTargets.None }));
    }

    [Fact]
    public void A_new_network_starts_as_kohya_does_and_its_settings_reach_every_module()
    {
        var (unet, te) = FakeModels.Small();
        using var a = LoraNetwork.Create(unet, te, new LoraNetworkOptions { Dropout = 0.25 }, new Generator(7, CPU));
        using var b = LoraNetwork.Create(unet, te, new LoraNetworkOptions { Dropout = 0.25 }, new Generator(7, CPU));
        using var c = LoraNetwork.Create(unet, te, new LoraNetworkOptions(), new Generator(8, CPU));

        Assert.Equal("new", a.Source);
        Assert.Null(a.Match);
        Assert.All(a.Modules, m => Assert.Equal(0.25, m.Dropout));
        Assert.All(c.Modules, m => Assert.Equal(0.0, m.Dropout));
        Assert.All(a.Modules, m => Assert.Equal(0f, m.UpWeight.abs().max().item<float>())); // up = 0: the model's output is unchanged
        Assert.All(a.Modules, m => Assert.True(m.DownWeight.abs().max().item<float>() > 0));
        Assert.Equal(a.Modules[0].DownWeight.data<float>().ToArray(), b.Modules[0].DownWeight.data<float>().ToArray()); // same generator, same start
        Assert.NotEqual(a.Modules[0].DownWeight.data<float>().ToArray(), c.Modules[0].DownWeight.data<float>().ToArray());
        // Modules come in a fixed order: UNet first, then the text encoder, each by module path.
        Assert.Equal(a.Modules.Select(m => (m.Part, m.LoraName)).OrderBy(x => x.Part).ThenBy(x => x.LoraName, StringComparer.Ordinal), a.Modules.Select(m => (m.Part, m.LoraName)));

        a.Multiplier = 0.3;
        Assert.All(a.Modules, m => Assert.Equal(0.3, m.Multiplier));
        a.Train(false);
        Assert.All(a.Modules, m => Assert.False(m.training));
        a.Train();
        Assert.All(a.Modules, m => Assert.True(m.training));
        Assert.Equal(2 * a.Modules.Count, a.Parameters().Count());
        var state = a.StateDict();
        Assert.Equal(3 * a.Modules.Count, state.Count);
        Assert.Contains(state, kv => kv.Key == "lora_unet_" + (Block + "attn1.to_q").Replace('.', '_') + ".alpha");
    }
}
