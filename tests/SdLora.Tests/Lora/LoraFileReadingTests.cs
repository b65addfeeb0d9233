using SdLora.IO;
using SdLora.Lora;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>
/// What <see cref="LoraFile.Read"/> makes of each key form, and each damaged file's whole message, one small file each.
/// </summary>
public class LoraFileReadingTests
{
    private const string Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";

    [Fact]
    public void PEFT_prefixes_and_attention_processor_names_become_module_paths()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.SaveSafetensors("peft.safetensors", new()
        {
            ["base_model.model.down_blocks.0.attentions.0.proj_in.lora_A.weight"] = torch.randn(2, 8),
            ["base_model.model.down_blocks.0.attentions.0.proj_in.lora_B.weight"] = torch.randn(8, 2),
            ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight"] = torch.randn(2, 8),
            ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight"] = torch.randn(8, 2),
            ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight"] = torch.randn(2, 6),
            ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight"] = torch.randn(8, 2),
        });

        using var lora = LoraFile.Read(path);

        Assert.Equal(LoraDialect.Diffusers, lora.Dialect);
        Assert.Equal(
            ["down_blocks.0.attentions.0.proj_in", "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k", "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"],
            lora.Modules.Select(m => m.Stem).Order(StringComparer.Ordinal));
        Assert.All(lora.Modules, m => Assert.Null(m.Alpha)); // no alpha key, no adapter_config.json: alpha = rank later
        Assert.Equal("F32", lora.StoredDType);
        Assert.Equal(new FileInfo(path).Length, lora.FileSize);
    }

    [Fact]
    public void Kohya_alpha_is_read_per_module_and_fp16_factors_come_back_in_fp32()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.SaveSafetensors("alpha.safetensors", new()
        {
            [Q + ".lora_down.weight"] = torch.randn(4, 6).to(ScalarType.Float16),
            [Q + ".lora_up.weight"] = torch.randn(8, 4).to(ScalarType.Float16),
            [Q + ".alpha"] = torch.tensor(2.5f),
        });

        using var lora = LoraFile.Read(path);

        var m = Assert.Single(lora.Modules);
        Assert.Equal(LoraDialect.Kohya, lora.Dialect);
        Assert.Equal(2.5, m.Alpha);
        Assert.Equal(4, m.Rank);
        Assert.Equal(ScalarType.Float32, m.Down.dtype);
        Assert.Equal("F16", lora.StoredDType);
        Assert.Empty(lora.UnknownKeys);
    }

    [Fact]
    public void Damaged_files_are_refused_with_the_file_the_key_and_the_fix()
    {
        using var dir = Fixtures.TempDir();

        var noUp = dir.SaveSafetensors("noup.safetensors", new() { [Q + ".lora_down.weight"] = torch.randn(2, 6) });
        Assert.Equal($"{noUp}: '{Q}.lora_down.weight' has no matching '{Q}.lora_up.weight'; the file is incomplete — re-export it",
            Assert.Throws<SdLoraException>(() => LoraFile.Read(noUp)).Message);

        var rank = dir.SaveSafetensors("rank.safetensors", new() { [Q + ".lora_down.weight"] = torch.randn(2, 6), [Q + ".lora_up.weight"] = torch.randn(8, 3) });
        Assert.Equal($"{rank}: '{Q}.lora_down.weight' [2,6] and '{Q}.lora_up.weight' [8,3] do not form a LoRA pair (expected down [r,in(,k,k)], up [out,r(,1,1)]); the file is damaged",
            Assert.Throws<SdLoraException>(() => LoraFile.Read(rank)).Message);

        var mixed = dir.SaveSafetensors("mixed.safetensors", new() { [Q + ".lora_down.weight"] = torch.randn(2, 6, 1, 1), [Q + ".lora_up.weight"] = torch.randn(8, 2) });
        Assert.Contains("do not form a LoRA pair", Assert.Throws<SdLoraException>(() => LoraFile.Read(mixed)).Message);

        var bigUp = dir.SaveSafetensors("bigup.safetensors", new() { [Q + ".lora_down.weight"] = torch.randn(2, 6, 3, 3), [Q + ".lora_up.weight"] = torch.randn(8, 2, 3, 3) });
        Assert.Contains("do not form a LoRA pair", Assert.Throws<SdLoraException>(() => LoraFile.Read(bigUp)).Message);

        var alpha = dir.SaveSafetensors("alpha.safetensors", new() { [Q + ".lora_down.weight"] = torch.randn(2, 6), [Q + ".lora_up.weight"] = torch.randn(8, 2), [Q + ".alpha"] = torch.ones(2) });
        Assert.Equal($"{alpha}: '{Q}.alpha' should be a single number but has shape [2]; the file is not a valid LoRA",
            Assert.Throws<SdLoraException>(() => LoraFile.Read(alpha)).Message);

        var empty = dir.SaveSafetensors("empty.safetensors", new() { ["something.weight"] = torch.randn(2, 2) });
        Assert.Equal($"{empty}: contains no LoRA tensors (no '*.lora_down.weight' / '*.lora_A.weight' keys); is it a LoRA file?",
            Assert.Throws<SdLoraException>(() => LoraFile.Read(empty)).Message);

        var loha = dir.SaveSafetensors("loha.safetensors", new() { [Q + ".hada_w1_a"] = torch.randn(2, 2) });
        Assert.Equal($"{loha}: contains no LoRA tensors (no '*.lora_down.weight' / '*.lora_A.weight' keys) (it looks like a LyCORIS LoHa/LoKr file, which sdlora does not read); is it a LoRA file?",
            Assert.Throws<SdLoraException>(() => LoraFile.Read(loha)).Message);
    }

    [Theory]
    [InlineData("model.diffusion_model.input_blocks.0.0.weight")]
    [InlineData("first_stage_model.decoder.conv_in.weight")]
    [InlineData("cond_stage_model.transformer.text_model.final_layer_norm.weight")]
    [InlineData("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight")]
    [InlineData("conv_in.weight")]
    [InlineData("text_model.embeddings.position_embedding.weight")]
    [InlineData("encoder.down.0.block.0.conv1.weight")]
    public void A_model_checkpoint_given_as_a_LoRA_is_named_as_such(string key)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.SaveSafetensors("model.safetensors", new() { [key] = torch.randn(2, 2) });
        Assert.Equal($"{path}: is a full model checkpoint (1 tensors, e.g. '{key}'), not a LoRA; pass it as the model (--model), not as a LoRA",
            Assert.Throws<SdLoraException>(() => LoraFile.Read(path)).Message);
    }

    [Theory]
    [InlineData("sd_v1", null)]
    [InlineData("SD_V1.5", null)]
    [InlineData("", null)]
    [InlineData("sd3", "is a LoRA for 'sd3' (metadata ss_base_model_version); sdlora works with Stable Diffusion 1.x (sd_v1) — use an SD 1.x LoRA")]
    [InlineData("sd_v2_768_v", "is a LoRA for Stable Diffusion 2.x (metadata ss_v2 / ss_base_model_version 'sd_v2_768_v'); sdlora works with SD 1.x — use an SD 1.x LoRA")]
    [InlineData("sdxl_base_v1-0", "is a LoRA for SDXL (ss_base_model_version 'sdxl_base_v1-0', or lora_te1_/lora_te2_ keys); sdlora works with Stable Diffusion 1.x — use an SD 1.x LoRA")]
    public void The_base_model_version_in_the_metadata_decides_the_family(string version, string? refusal)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.SaveSafetensors("v.safetensors", new() { [Q + ".lora_down.weight"] = torch.randn(2, 6), [Q + ".lora_up.weight"] = torch.randn(8, 2) },
            new() { ["ss_base_model_version"] = version, ["ss_v2"] = "False" });
        if (refusal is null)
        {
            using var lora = LoraFile.Read(path);
            Assert.Single(lora.Modules);
        }
        else Assert.Equal($"{path}: {refusal}", Assert.Throws<SdLoraException>(() => LoraFile.Read(path)).Message);
    }

    [Fact]
    public void An_SD2_flag_alone_is_refused_in_any_case()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.SaveSafetensors("v2.safetensors", new() { [Q + ".lora_down.weight"] = torch.randn(2, 6), [Q + ".lora_up.weight"] = torch.randn(8, 2) }, new() { ["ss_v2"] = "true" });
        Assert.Contains("is a LoRA for Stable Diffusion 2.x (metadata ss_v2 / ss_base_model_version '')", Assert.Throws<SdLoraException>(() => LoraFile.Read(path)).Message);
    }
}
