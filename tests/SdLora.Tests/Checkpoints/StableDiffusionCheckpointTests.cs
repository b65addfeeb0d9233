using SdLora.Checkpoints;
using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Checkpoints;

public class StableDiffusionCheckpointTests
{
    private static string LdmFile => Fixtures.CopiedSet("tiny-sd15-ldm.safetensors");
    private static string LdmYaml => Fixtures.CopiedSet("tiny-sd15-ldm.yaml");
    private static string DiffusersDir => Fixtures.CopiedSet("tiny-sd15");

    private static void AssertBitIdentical(ITensorSource expected, ITensorSource actual, int count, string what)
    {
        var e = expected.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var a = actual.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        Assert.Equal(count, e.Count);
        Assert.Equal(e, a);
        foreach (var name in e)
        {
            Assert.Equal(expected.ShapeOf(name), actual.ShapeOf(name));
            using var x = expected.Load(name);
            using var y = actual.Load(name);
            Assert.Equal(x.dtype, y.dtype);
            Assert.Equal(x.shape, y.shape);
            Assert.True(x.bytes.SequenceEqual(y.bytes), $"{what}: '{name}' differs");
        }
    }

    private static void AssertSameAsDiffusersFolder(StableDiffusionCheckpoint ldm)
    {
        using var diff = StableDiffusionCheckpoint.Open(DiffusersDir);
        AssertBitIdentical(diff.UNetWeights, ldm.UNetWeights, 684, "unet");
        AssertBitIdentical(diff.VaeWeights, ldm.VaeWeights, 244, "vae");
        AssertBitIdentical(diff.TextEncoderWeights, ldm.TextEncoderWeights, 52, "text encoder");
    }

    [Fact]
    public void Ldm_file_through_the_key_map_is_bit_identical_to_the_diffusers_folder()
    {
        using var ldm = StableDiffusionCheckpoint.Open(LdmFile);
        Assert.Equal(CheckpointLayout.LdmSingleFile, ldm.Layout);
        Assert.Equal(ModelFamily.StableDiffusion1, ldm.Family);
        Assert.StartsWith("YAML", ldm.ConfigSource); // the .yaml beside the file was found
        Assert.Empty(ldm.IgnoredKeys);
        AssertSameAsDiffusersFolder(ldm);
    }

    [Fact]
    public void Diffusers_folder_opens_with_configs_tokenizer_and_schedule()
    {
        using var d = StableDiffusionCheckpoint.Open(DiffusersDir);
        Assert.Equal(CheckpointLayout.DiffusersFolder, d.Layout);
        Assert.Equal(Path.Combine(DiffusersDir, "tokenizer"), d.TokenizerDir);
        Assert.Equal(32, d.ClipTextConfig.HiddenSize);
        Assert.Equal(new NoiseScheduleSettings(), d.Schedule);
    }

    [Fact]
    public void Reverse_map_covers_every_ldm_key()
    {
        var unet = UNetConfig.FromDiffusersJson(File.ReadAllText(Fixtures.CopiedSet("tiny-sd15/unet/config.json")));
        var vae = AutoencoderKLConfig.FromDiffusersJson(File.ReadAllText(Fixtures.CopiedSet("tiny-sd15/vae/config.json")));
        using var raw = SafetensorsFile.Open(LdmFile);
        Assert.Equal(980, raw.Entries.Count);
        foreach (var key in raw.Keys)
        {
            Assert.True(LdmKeyMap.TryLdmKeyToDiffusers(key, unet, vae, out var part, out var name), key);
            Assert.Equal(key, LdmKeyMap.DiffusersKeyToLdm(part, name, unet, vae));
        }
    }

    [Fact]
    public void Key_map_round_trips_every_sd15_parameter_name()
    {
        var (u, v, c) = (UNetConfig.StableDiffusion15, AutoencoderKLConfig.StableDiffusion15, ClipTextConfig.StableDiffusion15);
        int total = 0;
        foreach (var part in new[] { ModelPart.UNet, ModelPart.Vae, ModelPart.TextEncoder })
            foreach (var (name, _) in ReferenceLayout.Of(part, u, v, c))
            {
                var ldm = LdmKeyMap.DiffusersKeyToLdm(part, name, u, v);
                Assert.NotNull(ldm);
                Assert.True(LdmKeyMap.TryLdmKeyToDiffusers(ldm!, u, v, out var back, out var backName), ldm);
                Assert.Equal((part, name), (back, backName));
                total++;
            }
        Assert.Equal(686 + 248 + 196, total);
    }

    [Theory]
    [InlineData("input_blocks.1.1.transformer_blocks.0.attn1.to_q", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")]
    [InlineData("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv")]
    [InlineData("input_blocks.7.0.skip_connection", "down_blocks.2.resnets.0.conv_shortcut")]
    [InlineData("input_blocks.11.0.out_layers.3", "down_blocks.3.resnets.1.conv2")]
    [InlineData("middle_block.1.proj_in", "mid_block.attentions.0.proj_in")]
    [InlineData("middle_block.2.emb_layers.1", "mid_block.resnets.1.time_emb_proj")]
    [InlineData("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv")]
    [InlineData("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv")]
    [InlineData("output_blocks.11.1.transformer_blocks.0.ff.net.2", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2")]
    [InlineData("time_embed.2", "time_embedding.linear_2")]
    [InlineData("out.0", "conv_norm_out")]
    public void Unet_module_paths_map_both_ways_for_sd15(string ldm, string diffusers)
    {
        Assert.Equal(diffusers, LdmKeyMap.UnetModulePathLdmToDiffusers(ldm));
        Assert.Equal(ldm, LdmKeyMap.UnetModulePathDiffusersToLdm(diffusers));
    }

    [Theory]
    [InlineData("decoder.up.3.block.0.nin_shortcut", "decoder.up_blocks.0.resnets.0.conv_shortcut")]
    [InlineData("decoder.up.1.upsample.conv", "decoder.up_blocks.2.upsamplers.0.conv")]
    [InlineData("encoder.mid.attn_1.proj_out", "encoder.mid_block.attentions.0.to_out.0")]
    [InlineData("encoder.norm_out", "encoder.conv_norm_out")]
    public void Vae_module_paths_map_both_ways(string ldm, string diffusers)
    {
        Assert.Equal(diffusers, LdmKeyMap.VaeModulePathLdmToDiffusers(ldm));
        Assert.Equal(ldm, LdmKeyMap.VaeModulePathDiffusersToLdm(diffusers));
    }

    [Fact]
    public void Older_text_encoder_naming_without_text_model_maps()
    {
        Assert.Equal("text_model.encoder.layers.0.mlp.fc1.weight", LdmKeyMap.TextModulePathLdmToTransformers("encoder.layers.0.mlp.fc1.weight"));
        Assert.Equal("text_model.final_layer_norm.bias", LdmKeyMap.TextModulePathLdmToTransformers("text_model.final_layer_norm.bias"));
    }

    [Fact]
    public void Reference_layout_matches_the_tiny_diffusers_files_names_and_shapes()
    {
        var d = StableDiffusionCheckpoint.Open(DiffusersDir);
        using var _ = d;
        foreach (var part in new[] { ModelPart.UNet, ModelPart.Vae, ModelPart.TextEncoder })
        {
            var expected = d.WeightsOf(part).Keys.OrderBy(k => k, StringComparer.Ordinal).Select(k => $"{k} [{string.Join(",", d.WeightsOf(part).ShapeOf(k))}]");
            var actual = ReferenceLayout.Of(part, d.UNetConfig, d.AutoencoderKLConfig, d.ClipTextConfig).OrderBy(x => x.Name, StringComparer.Ordinal).Select(x => $"{x.Name} [{string.Join(",", x.Shape)}]");
            Assert.Equal(expected, actual);
        }
    }

    private static void AssertUNetEqual(UNetConfig e, UNetConfig a, bool heads = true, bool sampleSize = true)
    {
        Assert.Equal(e.InChannels, a.InChannels);
        Assert.Equal(e.OutChannels, a.OutChannels);
        Assert.Equal(e.Channels, a.Channels);
        Assert.Equal(e.DownBlocks, a.DownBlocks);
        Assert.Equal(e.UpBlocks, a.UpBlocks);
        Assert.Equal(e.LayersPerBlock, a.LayersPerBlock);
        Assert.Equal(e.NormNumGroups, a.NormNumGroups);
        Assert.Equal(e.NormEps, a.NormEps);
        Assert.Equal(e.CrossAttentionDim, a.CrossAttentionDim);
        if (heads) Assert.Equal(e.HeadsPerBlock, a.HeadsPerBlock);
        Assert.Equal(e.FlipSinToCos, a.FlipSinToCos);
        Assert.Equal(e.FreqShift, a.FreqShift);
        Assert.Equal(e.UseLinearProjection, a.UseLinearProjection);
        if (sampleSize) Assert.Equal(e.SampleSize, a.SampleSize);
        Assert.Equal(e.PredictionType, a.PredictionType);
    }

    private static void AssertVaeEqual(AutoencoderKLConfig e, AutoencoderKLConfig a, bool sampleSize = true)
    {
        Assert.Equal(e with { BlockOutChannels = null, SampleSize = 0 }, a with { BlockOutChannels = null, SampleSize = 0 });
        Assert.Equal(e.Channels, a.Channels);
        if (sampleSize) Assert.Equal(e.SampleSize, a.SampleSize);
    }

    [Fact]
    public void Config_from_yaml_equals_the_diffusers_configs()
    {
        using var d = StableDiffusionCheckpoint.Open(DiffusersDir);
        var y = LdmYamlConfig.Load(LdmYaml);
        AssertUNetEqual(d.UNetConfig, y.UNet);
        AssertVaeEqual(d.AutoencoderKLConfig, y.Vae);
        Assert.Equal(d.ClipTextConfig, y.TextEncoder);
        Assert.Equal(d.Schedule with { PredictionType = "epsilon" }, y.Schedule);
        Assert.Equal("ldm.modules.encoders.modules.FrozenCLIPEmbedder", y.CondStageTarget);
    }

    [Fact]
    public void Config_from_shapes_equals_the_diffusers_configs_except_what_shapes_cannot_tell()
    {
        using var d = StableDiffusionCheckpoint.Open(DiffusersDir);
        using var raw = SafetensorsFile.Open(LdmFile);
        AssertUNetEqual(d.UNetConfig, ConfigFromShapes.UNet(raw), heads: false, sampleSize: false);
        AssertVaeEqual(d.AutoencoderKLConfig, ConfigFromShapes.Vae(raw), sampleSize: false);
        Assert.Equal(d.ClipTextConfig with { NumAttentionHeads = 1 }, ConfigFromShapes.ClipText(new PrefixedTensorSource(raw, LdmKeyMap.TextEncoderPrefix)));
    }

    [Fact]
    public void Ldm_file_without_yaml_uses_shapes_and_still_maps_identically()
    {
        using var dir = Fixtures.TempDir();
        var copy = dir.File("model.safetensors");
        File.Copy(LdmFile, copy);
        using var ldm = StableDiffusionCheckpoint.Open(copy);
        Assert.Equal("tensor shapes", ldm.ConfigSource);
        AssertSameAsDiffusersFolder(ldm);
    }

    [Fact]
    public void Yaml_with_v_parameterization_sets_v_prediction()
    {
        var text = File.ReadAllText(LdmYaml).Replace("    linear_start: 0.00085", "    parameterization: \"v\"\n    linear_start: 0.00085");
        var y = LdmYamlConfig.Parse(text, "v.yaml");
        Assert.Equal("v_prediction", y.UNet.PredictionType);
        Assert.Equal("v_prediction", y.Schedule.PredictionType);
    }

    /// <summary>The tiny LDM tensors plus what real SD1.5 files carry: position_ids, EMA weights, DDPM buffers.</summary>
    private static List<(string, Tensor)> RealLookingTensors(ScalarType? dtype = null)
    {
        using var raw = SafetensorsFile.Open(LdmFile);
        var list = raw.Keys.Select(k => (k, raw.Load(k, dtype))).ToList();
        list.Add(("cond_stage_model.transformer.text_model.embeddings.position_ids", torch.arange(77, ScalarType.Int64).unsqueeze(0)));
        list.Add(("model_ema.decay", torch.tensor(0.9999f)));
        list.Add(("model_ema.num_updates", torch.tensor(470000L)));
        list.Add(("model_ema.diffusion_modelinput_blocks00weight", torch.zeros(32, 4, 3, 3)));
        list.Add(("betas", torch.linspace(0.00085, 0.012, 1000)));
        list.Add(("alphas_cumprod", torch.linspace(0.999, 0.005, 1000)));
        list.Add(("alphas_cumprod_prev", torch.linspace(1, 0.005, 1000)));
        return list;
    }

    [Fact]
    public void Real_looking_safetensors_with_ema_position_ids_and_schedule_buffers_loads_the_same()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("sd15-real.safetensors");
        var tensors = RealLookingTensors();
        Safetensors.Save(path, tensors.Select(t => KeyValuePair.Create(t.Item1, t.Item2)));
        foreach (var (_, t) in tensors) t.Dispose();
        using var ldm = StableDiffusionCheckpoint.Open(path, LdmYaml);
        Assert.Equal(7, ldm.IgnoredKeys.Count);
        AssertSameAsDiffusersFolder(ldm);
    }

    [Fact]
    public void Real_looking_ckpt_with_nested_state_dict_loads_the_same()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("sd15-real.ckpt");
        var tensors = RealLookingTensors();
        TorchZipWriter.WriteStateDict(path, tensors, wrap: true);
        foreach (var (_, t) in tensors) t.Dispose();
        using var ldm = StableDiffusionCheckpoint.Open(path, LdmYaml);
        Assert.Equal(7, ldm.IgnoredKeys.Count);
        AssertSameAsDiffusersFolder(ldm);
    }

    [Fact]
    public void Fp32_and_bf16_files_load_with_converted_values()
    {
        using var dir = Fixtures.TempDir();
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            var path = dir.File($"m-{dtype}.safetensors");
            var tensors = RealLookingTensors(dtype);
            Safetensors.Save(path, tensors.Select(t => KeyValuePair.Create(t.Item1, t.Item2)));
            foreach (var (_, t) in tensors) t.Dispose();
            using var ldm = StableDiffusionCheckpoint.Open(path, LdmYaml);
            using var diff = StableDiffusionCheckpoint.Open(DiffusersDir);
            const string name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
            using var expected = diff.UNetWeights.Load(name, ScalarType.Float32);
            using var actual = ldm.UNetWeights.Load(name, ScalarType.Float32);
            using var expectedRounded = expected.to(dtype).to(ScalarType.Float32);
            Assert.True(expectedRounded.equal(actual).all().item<bool>());
            using var attn = ldm.VaeWeights.Load("decoder.mid_block.attentions.0.to_v.weight");
            Assert.Equal([64L, 64L], attn.shape);
            Assert.Equal(dtype, attn.dtype);
        }
    }
}
