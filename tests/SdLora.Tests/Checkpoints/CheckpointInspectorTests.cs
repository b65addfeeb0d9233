using SdLora.Checkpoints;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Checkpoints;

/// <summary>
/// What `model inspect` says about files that load but would not work (a weight missing, a weight of the wrong shape),
/// an unsupported file's parts, the ignored keys' groups, dtypes read without loading, and a path that is not there.
/// </summary>
public class CheckpointInspectorTests
{
    private static string Ldm => Fixtures.CopiedSet("tiny-sd15-ldm.safetensors");

    /// <summary>The tiny LDM file rewritten with <paramref name="change"/> applied to its tensors.</summary>
    private static string Rewritten(TempDir dir, Action<Dictionary<string, Tensor>> change)
    {
        using var file = SafetensorsFile.Open(Ldm);
        var tensors = file.Keys.ToDictionary(k => k, k => file.Load(k));
        change(tensors);
        var path = dir.SaveSafetensors("changed.safetensors", tensors);
        // The YAML beside the file gives its dims (without it they come from the shapes, which the change may break).
        var yaml = Path.ChangeExtension(Ldm, ".yaml");
        if (File.Exists(yaml)) File.Copy(yaml, Path.ChangeExtension(path, ".yaml"));
        return path;
    }

    [Fact]
    public void A_file_missing_a_weight_is_reported_unusable_naming_the_part_and_the_first_missing_weight()
    {
        using var dir = Fixtures.TempDir();
        const string gone = "first_stage_model.decoder.conv_out.bias";
        var path = Rewritten(dir, t => t.Remove(gone));

        var r = CheckpointInspector.Inspect(path);

        Assert.False(r.Usable);
        Assert.Equal("its VAE lacks 1 weights (first: decoder.conv_out.bias); the file is incomplete", r.WhyNot);
        Assert.Equal(979, r.TensorCount);
        Assert.Equal(new FileInfo(path).Length, r.FileBytes);
    }

    [Fact]
    public void A_weight_of_the_wrong_shape_is_reported_with_the_config_it_was_checked_against()
    {
        using var dir = Fixtures.TempDir();
        const string key = "cond_stage_model.transformer.text_model.final_layer_norm.bias";
        var path = Rewritten(dir, t => t[key] = torch.zeros(t[key].shape[0] + 1, dtype: t[key].dtype));

        var r = CheckpointInspector.Inspect(path);

        Assert.False(r.Usable);
        Assert.Equal($"its text encoder weight 'text_model.final_layer_norm.bias' does not match the config ({r.ConfigSource}); set config to the right LDM YAML", r.WhyNot);
        Assert.NotNull(r.ConfigSource);
    }

    [Fact]
    public void An_unsupported_file_still_shows_its_parts()
    {
        using var dir = Fixtures.TempDir();
        // An SDXL-like file: the second text encoder's prefix makes it another family.
        var path = dir.SaveSafetensors("xl.safetensors", new Dictionary<string, Tensor>
        {
            ["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(320, 4, 3, 3, dtype: ScalarType.Float16),
            ["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(1280, 2816, dtype: ScalarType.Float16),
            ["conditioner.embedders.1.model.ln_final.weight"] = torch.zeros(1280, dtype: ScalarType.Float16),
            ["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3, 128, 3, 3),
        });

        var r = CheckpointInspector.Inspect(path);

        Assert.False(r.Usable);
        Assert.NotNull(r.WhyNot);
        Assert.Equal("single file", r.Layout);
        Assert.Equal(4, r.TensorCount);
        Assert.Equal((3, 1), (r.DTypeCounts["F16"], r.DTypeCounts["F32"]));
        Assert.Equal(["UNet 2 3616000", "VAE 1 3456"], r.Parts.Select(p => $"{p.Part} {p.Tensors} {p.Parameters}"));
    }

    [Fact]
    public void Ignored_keys_are_grouped_by_kind()
    {
        var groups = CheckpointInspector.Groups(["model_ema.decay", "model_ema.num_updates", "betas", "alphas_cumprod",
            "cond_stage_model.transformer.text_model.embeddings.position_ids", "lora_unet_x.alpha", "lora_unet_y.alpha"]);

        Assert.Equal(new Dictionary<string, int>
        {
            ["EMA weights (model_ema.*)"] = 2,
            ["noise-schedule buffers (betas, alphas_cumprod, ...)"] = 2,
            ["position_ids buffer"] = 1,
            ["other (lora_unet_x.*)"] = 1,
            ["other (lora_unet_y.*)"] = 1,
        }, groups);
    }

    [Fact]
    public void Dtypes_are_read_through_renamed_and_filtered_views_without_loading()
    {
        using var file = SafetensorsFile.Open(Ldm);
        var key = file.Keys.First();
        var mapped = new MappedTensorSource(file, [("renamed", key, null)]);

        Assert.Equal("F16", CheckpointInspector.DTypeName(mapped, "renamed"));
        Assert.Equal("F16", CheckpointInspector.DTypeName(new FilteredTensorSource(mapped, _ => true), "renamed"));
        Assert.Null(CheckpointInspector.DTypeName(new DictionaryTensorSource(new Dictionary<string, Tensor> { ["a"] = torch.zeros(1) }), "a"));
    }

    [Fact]
    public void A_path_that_is_not_there_is_refused_with_what_to_pass()
    {
        using var dir = Fixtures.TempDir();
        Assert.Equal($"{dir.File("nope.safetensors")}: no such file or folder; pass a .safetensors/.ckpt file or a diffusers model folder",
            Assert.Throws<SdLoraException>(() => CheckpointInspector.Inspect(dir.File("nope.safetensors"))).Message);
    }
}
