using System.Diagnostics;
using SdLora.Checkpoints;
using SdLora.Models;
using Xunit;

namespace SdLora.Tests.Checkpoints;

public class LdmYamlConfigTests
{
    // The structure of CompVis/stable-diffusion configs/stable-diffusion/v1-inference.yaml, as shipped next to
    // SD1.x checkpoints (A1111 keeps it as configs/v1-inference.yaml).
    private const string V1Inference = """
        model:
          base_learning_rate: 1.0e-04
          target: ldm.models.diffusion.ddpm.LatentDiffusion
          params:
            linear_start: 0.00085
            linear_end: 0.0120
            num_timesteps_cond: 1
            log_every_t: 200
            timesteps: 1000
            first_stage_key: "jpg"
            cond_stage_key: "txt"
            image_size: 64
            channels: 4
            cond_stage_trainable: false   # Note: different from the one we trained before
            conditioning_key: crossattn
            monitor: val/loss_simple_ema
            scale_factor: 0.18215
            use_ema: False

            scheduler_config: # 10000 warmup steps
              target: ldm.lr_scheduler.LambdaLinearScheduler
              params:
                warm_up_steps: [ 10000 ]
                cycle_lengths: [ 10000000000000 ] # incredibly large number to prevent corner cases
                f_start: [ 1.e-6 ]
                f_max: [ 1. ]
                f_min: [ 1. ]

            unet_config:
              target: ldm.modules.diffusionmodules.openaimodel.UNetModel
              params:
                image_size: 32 # unused
                in_channels: 4
                out_channels: 4
                model_channels: 320
                attention_resolutions: [ 4, 2, 1 ]
                num_res_blocks: 2
                channel_mult: [ 1, 2, 4, 4 ]
                num_heads: 8
                use_spatial_transformer: True
                transformer_depth: 1
                context_dim: 768
                use_checkpoint: True
                legacy: False

            first_stage_config:
              target: ldm.models.autoencoder.AutoencoderKL
              params:
                embed_dim: 4
                monitor: val/rec_loss
                ddconfig:
                  double_z: true
                  z_channels: 4
                  resolution: 256
                  in_channels: 3
                  out_ch: 3
                  ch: 128
                  ch_mult:
                  - 1
                  - 2
                  - 4
                  - 4
                  num_res_blocks: 2
                  attn_resolutions: []
                  dropout: 0.0
                lossconfig:
                  target: torch.nn.Identity

            cond_stage_config:
              target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
        """;

    [Fact]
    public void V1_inference_yaml_gives_the_sd15_configs()
    {
        var y = LdmYamlConfig.Parse(V1Inference, "v1-inference.yaml");
        var sd15 = UNetConfig.StableDiffusion15;
        Assert.Equal(sd15.Channels, y.UNet.Channels);
        Assert.Equal(sd15.DownBlocks, y.UNet.DownBlocks);
        Assert.Equal(sd15.UpBlocks, y.UNet.UpBlocks);
        Assert.Equal(sd15.HeadsPerBlock, y.UNet.HeadsPerBlock);
        Assert.Equal((4, 4, 2, 768, false, 64, "epsilon"),
            (y.UNet.InChannels, y.UNet.OutChannels, y.UNet.LayersPerBlock, y.UNet.CrossAttentionDim, y.UNet.UseLinearProjection, y.UNet.SampleSize, y.UNet.PredictionType));
        Assert.Equal(AutoencoderKLConfig.StableDiffusion15.Channels, y.Vae.Channels);
        Assert.Equal(AutoencoderKLConfig.StableDiffusion15 with { BlockOutChannels = null, SampleSize = 256 }, y.Vae with { BlockOutChannels = null });
        Assert.Equal(ClipTextConfig.StableDiffusion15, y.TextEncoder);
        Assert.Equal(NoiseScheduleSettings.StableDiffusion15, y.Schedule);
        Assert.Equal("ldm.modules.encoders.modules.FrozenCLIPEmbedder", y.CondStageTarget);
    }

    [Fact]
    public void V2_style_yaml_reads_head_channels_linear_projection_and_v_prediction()
    {
        var v2 = V1Inference
            .Replace("    linear_start: 0.00085", "    parameterization: \"v\"\n    linear_start: 0.00085")
            .Replace("        num_heads: 8", "        num_head_channels: 64\n        use_linear_in_transformer: True")
            .Replace("context_dim: 768", "context_dim: 1024")
            .Replace("FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder\n      params:\n        freeze: True\n        layer: \"penultimate\"");
        var y = LdmYamlConfig.Parse(v2, "v2-inference-v.yaml");
        Assert.Equal([5, 10, 20, 20], y.UNet.HeadsPerBlock);
        Assert.True(y.UNet.UseLinearProjection);
        Assert.Equal(1024, y.UNet.CrossAttentionDim);
        Assert.Equal("v_prediction", y.Schedule.PredictionType);
        Assert.Equal("ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder", y.CondStageTarget);
    }

    [Fact]
    public void Yaml_written_with_flow_mappings_anchors_and_documents_reads_the_same()
    {
        // The same values in YAML forms a hand-rolled subset reader gets wrong: a document marker, flow mappings,
        // an anchor reused by alias, quoted keys, a multi-line flow sequence.
        const string yaml = """
            %YAML 1.1
            ---
            model:
              params:
                "linear_start": 0.00085
                linear_end: 0.0120
                image_size: 64
                scale_factor: 0.18215
                unet_config: {target: ldm.modules.diffusionmodules.openaimodel.UNetModel, params: {model_channels: 320, attention_resolutions: [4, 2, 1], channel_mult: &mult [1, 2,
                  4, 4], num_heads: 8, context_dim: 768}}
                first_stage_config:
                  params:
                    ddconfig: {z_channels: 4, resolution: 256, ch: 128, ch_mult: *mult, num_res_blocks: 2}
                cond_stage_config: {target: 'ldm.modules.encoders.modules.FrozenCLIPEmbedder'}
            ...
            """;
        var expected = LdmYamlConfig.Parse(V1Inference, "v1-inference.yaml");
        var y = LdmYamlConfig.Parse(yaml, "flow.yaml");
        Assert.Equal(expected.UNet.Channels, y.UNet.Channels);
        Assert.Equal(expected.UNet.DownBlocks, y.UNet.DownBlocks);
        Assert.Equal(expected.UNet.HeadsPerBlock, y.UNet.HeadsPerBlock);
        Assert.Equal(expected.Vae.Channels, y.Vae.Channels);
        Assert.Equal(expected.Vae with { BlockOutChannels = null }, y.Vae with { BlockOutChannels = null });
        Assert.Equal(expected.Schedule, y.Schedule);
        Assert.Equal(expected.CondStageTarget, y.CondStageTarget);
    }

    [Fact]
    public void Target_class_names_and_python_tags_stay_plain_text()
    {
        var yaml = V1Inference.Replace("target: ldm.modules.encoders.modules.FrozenCLIPEmbedder",
            "target: !!python/str ldm.modules.encoders.modules.FrozenCLIPEmbedder\n      params: !!python/object/apply:os.system [\"exit 3\"]\n      loader: !!python/name:yaml.UnsafeLoader ''");
        var y = LdmYamlConfig.Parse(yaml, "tagged.yaml");
        Assert.Equal("ldm.modules.encoders.modules.FrozenCLIPEmbedder", y.CondStageTarget);
        Assert.Equal(UNetConfig.StableDiffusion15.Channels, y.UNet.Channels);
    }

    [Fact]
    public void Hostile_yaml_is_refused_quickly_without_expanding_or_recursing()
    {
        // 200,000 nested brackets: YamlDotNet's tree builder would overflow the stack, its scanner needs minutes.
        var sw = Stopwatch.StartNew();
        var deep = "model:\n  params: " + new string('[', 200_000) + new string(']', 200_000) + "\n";
        var ex = Assert.Throws<SdLoraException>(() => LdmYamlConfig.Parse(deep, "deep.yaml"));
        Assert.Contains("nested more than", ex.Message);

        // Too many nodes for a config.
        var wide = "model:\n  params:\n    x: [" + string.Join(",", Enumerable.Repeat("1", 200_000)) + "]\n";
        ex = Assert.Throws<SdLoraException>(() => LdmYamlConfig.Parse(wide, "wide.yaml"));
        Assert.Contains("YAML nodes", ex.Message);

        // "Billion laughs": aliases are references, never copied; only paths are looked up.
        var laughs = "lol: &a [x, x, x, x, x, x, x, x, x, x]\n" + string.Concat(Enumerable.Range(1, 9).Select(i =>
            $"l{i}: &a{i} [{string.Join(", ", Enumerable.Repeat(i == 1 ? "*a" : $"*a{i - 1}", 10))}]\n"));
        var y = LdmYamlConfig.Parse(laughs + V1Inference, "laughs.yaml");
        Assert.Equal(UNetConfig.StableDiffusion15.Channels, y.UNet.Channels);
        Assert.True(sw.Elapsed < TimeSpan.FromMinutes(1), $"took {sw.Elapsed}"); // a hang would be minutes to hours

        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("huge.yaml"), V1Inference + "\n# " + new string('x', LdmYamlConfig.MaxFileBytes) + "\n");
        ex = Assert.Throws<SdLoraException>(() => LdmYamlConfig.Load(tmp.File("huge.yaml")));
        Assert.Contains("too large", ex.Message);
    }

    [Theory]
    [InlineData("model:\n  params: [1, 2\n  x: 3\n", "line ")]
    [InlineData("model:\n  params:\n    a: 1\n   b: 2\n", "line ")]
    [InlineData("- a\n- b\n", "top level is not a mapping")]
    [InlineData("model:\n  target: x\n", "has no 'model: params:' section")]
    [InlineData("", "has no 'model: params:' section")]
    [InlineData("model: *undefined\n", "line 1")]
    public void Malformed_or_foreign_yaml_is_a_one_line_error_naming_the_file(string yaml, string expected)
    {
        var ex = Assert.Throws<SdLoraException>(() => LdmYamlConfig.Parse(yaml, "bad.yaml"));
        Assert.StartsWith("bad.yaml: ", ex.Message);
        Assert.Contains(expected, ex.Message);
        Assert.DoesNotContain('\n', ex.Message);
    }
}
