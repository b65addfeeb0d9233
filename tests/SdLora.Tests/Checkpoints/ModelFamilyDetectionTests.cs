using System.Text.Json;
using SdLora.Checkpoints;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Checkpoints;

public class ModelFamilyDetectionTests
{
    private const string U = "model.diffusion_model.";

    private static string Write(TempDir dir, string name, params (string Key, long[] Shape)[] keys)
    {
        var path = dir.File(name);
        var tensors = keys.Select(k => KeyValuePair.Create(k.Key, torch.zeros(k.Shape, ScalarType.Float16))).ToList();
        Safetensors.Save(path, tensors);
        foreach (var t in tensors) t.Value.Dispose();
        return path;
    }

    private static (string, long[])[] Sd1Like(long inChannels = 4, long context = 768, string text = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight") =>
    [
        (U + "input_blocks.0.0.weight", [8, inChannels, 3, 3]),
        (U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", [8, context]),
        ("first_stage_model.encoder.conv_in.weight", [8, 3, 3, 3]),
        ("first_stage_model.decoder.conv_out.weight", [3, 8, 3, 3]),
        (text, [10, context]),
    ];

    private static string OpenError(string path) => Assert.Throws<SdLoraException>(() => StableDiffusionCheckpoint.Open(path)).Message;

    [Fact]
    public void Sd2_checkpoint_is_named_and_refused()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "sd2.safetensors", (U + "input_blocks.0.0.weight", [8, 4, 3, 3]), (U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", [8, 1024]),
            ("cond_stage_model.model.token_embedding.weight", [10, 1024]), ("first_stage_model.encoder.conv_in.weight", [8, 3, 3, 3]));
        Assert.Equal($"{path}: is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder cond_stage_model.model.*, 1024-wide cross-attention); sdlora supports Stable Diffusion 1.x (1.4/1.5 and models fine-tuned from them) only; use an SD1.x checkpoint", OpenError(path));
    }

    [Fact]
    public void Sdxl_checkpoint_is_named_and_refused()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "sdxl.safetensors", (U + "input_blocks.0.0.weight", [8, 4, 3, 3]), (U + "label_emb.0.0.weight", [8, 2816]),
            ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", [10, 768]));
        Assert.Equal($"{path}: is a Stable Diffusion XL checkpoint (conditioner.embedders.*, label_emb); sdlora supports Stable Diffusion 1.x (1.4/1.5 and models fine-tuned from them) only; use an SD1.x checkpoint", OpenError(path));
    }

    [Fact]
    public void Inpainting_checkpoint_is_named_and_refused()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "inpaint.safetensors", Sd1Like(inChannels: 9));
        Assert.Equal($"{path}: is a Stable Diffusion 1.x inpainting checkpoint (9 UNet input channels); sdlora supports Stable Diffusion 1.x (1.4/1.5 and models fine-tuned from them) only; use an SD1.x checkpoint", OpenError(path));
    }

    [Fact]
    public void Lora_file_is_named_and_refused_as_a_base_model()
    {
        var path = Fixtures.CopiedSet("lora_kohya_tiny.safetensors");
        Assert.Equal($"{path}: is a LoRA (low-rank adapter) file; it is a LoRA, not a base model; load a base SD1.x checkpoint and apply the LoRA with --lora", OpenError(path));
    }

    [Fact]
    public void Vae_only_file_is_named()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "vae.safetensors", ("encoder.down.0.block.0.conv1.weight", [8, 8, 3, 3]), ("decoder.up.0.block.0.conv1.weight", [8, 8, 3, 3]));
        Assert.StartsWith($"{path}: is a VAE on its own; it holds only a VAE", OpenError(path));
    }

    [Fact]
    public void Unknown_file_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "what.safetensors", ("fc.weight", [2, 2]));
        Assert.Equal($"{path}: is not a Stable Diffusion checkpoint sdlora recognises (no model.diffusion_model.* UNet); sdlora supports Stable Diffusion 1.x (1.4/1.5 and models fine-tuned from them) only; use an SD1.x checkpoint", OpenError(path));
    }

    [Fact]
    public void Sd1_file_without_vae_says_what_is_missing()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "unet-only.safetensors", Sd1Like().Where(k => !k.Item1.StartsWith("first_stage")).ToArray());
        Assert.Equal($"{path}: is a Stable Diffusion 1.x checkpoint; it lacks the VAE (first_stage_model.*); use a complete SD1.x checkpoint (UNet, VAE and text encoder in one file, or a diffusers folder)", OpenError(path));
    }

    [Fact]
    public void Sd1_keys_with_older_text_naming_are_detected_as_sd1()
    {
        using var dir = Fixtures.TempDir();
        var path = Write(dir, "old.safetensors", Sd1Like(text: "cond_stage_model.transformer.embeddings.token_embedding.weight"));
        using var f = SafetensorsFile.Open(path);
        var d = ModelFamilyDetector.DetectSingleFile(f);
        Assert.Equal(ModelFamily.StableDiffusion1, d.Family);
        Assert.True(d.IsSupported);
    }

    private static string DiffusersFolder(TempDir dir, int crossAttention, bool textEncoder2 = false, string cls = "StableDiffusionPipeline")
    {
        var root = dir.File("model");
        foreach (var sub in new[] { "unet", "vae", "text_encoder", "tokenizer", "scheduler" }) Directory.CreateDirectory(Path.Combine(root, sub));
        if (textEncoder2) Directory.CreateDirectory(Path.Combine(root, "text_encoder_2"));
        File.WriteAllText(Path.Combine(root, "model_index.json"), JsonSerializer.Serialize(new Dictionary<string, object> { ["_class_name"] = cls }));
        File.WriteAllText(Path.Combine(root, "unet", "config.json"), $"{{\"cross_attention_dim\": {crossAttention}, \"in_channels\": 4}}");
        return root;
    }

    [Fact]
    public void Diffusers_sd2_folder_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var root = DiffusersFolder(dir, 1024);
        Assert.Equal($"{root}: is a Stable Diffusion 2.x diffusers folder (cross_attention_dim 1024); sdlora supports Stable Diffusion 1.x (1.4/1.5 and models fine-tuned from them) only; use an SD1.x checkpoint", OpenError(root));
    }

    [Fact]
    public void Diffusers_sdxl_folder_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var root = DiffusersFolder(dir, 2048, textEncoder2: true, cls: "StableDiffusionXLPipeline");
        Assert.StartsWith($"{root}: is a Stable Diffusion XL diffusers folder", OpenError(root));
    }

    [Fact]
    public void Inspect_reports_unusable_files_without_throwing()
    {
        var r = CheckpointInspector.Inspect(Fixtures.CopiedSet("lora_kohya_tiny.safetensors"));
        Assert.False(r.Usable);
        Assert.Equal("Lora", r.Family);
        Assert.Equal(630, r.TensorCount);
        Assert.Equal(630, r.DTypeCounts["F16"]);
    }

    [Fact]
    public void Inspect_counts_parts_dtypes_and_ignored_keys()
    {
        var r = CheckpointInspector.Inspect(Fixtures.CopiedSet("tiny-sd15-ldm.safetensors"));
        Assert.True(r.Usable, r.WhyNot);
        Assert.Equal(["UNet", "VAE", "text encoder"], r.Parts.Select(p => p.Part));
        Assert.Equal([684, 244, 52], r.Parts.Select(p => p.Tensors));
        Assert.Equal(980, r.DTypeCounts["F16"]);
        Assert.Equal(r.Parts.Sum(p => p.Parameters), CheckpointInspector.Inspect(Fixtures.CopiedSet("tiny-sd15")).Parts.Sum(p => p.Parameters));
        Assert.Equal(1, CheckpointInspector.Groups(["model_ema.decay"])["EMA weights (model_ema.*)"]);
    }
}

public class LoadBenchmarkLayoutTests
{
    [Fact]
    public void Synthetic_sd15_layout_has_the_real_key_count_and_parameter_count()
    {
        var layout = SdLora.Benchmarks.LoadBenchmark.Sd15LdmLayout();
        Assert.Equal(686 + 248 + 196, layout.Count);
        Assert.Equal(layout.Count, layout.Select(x => x.Name).Distinct().Count());
        long parameters = layout.Sum(x => x.Shape.Aggregate(1L, (a, b) => a * b));
        // SD1.5: UNet 859,520,964 + VAE 83,653,863 + CLIP-L text 123,060,480.
        Assert.Equal(859_520_964L + 83_653_863L + 123_060_480L, parameters);
        Assert.Contains(layout, x => x.Name == "first_stage_model.decoder.mid.attn_1.q.weight" && x.Shape.SequenceEqual(new long[] { 512, 512, 1, 1 }));
        Assert.Contains(layout, x => x.Name == "model.diffusion_model.output_blocks.8.2.conv.weight");
    }
}
