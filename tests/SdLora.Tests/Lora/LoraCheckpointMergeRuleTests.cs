using SdLora.IO;
using SdLora.Lora;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>
/// `lora merge` on hand-made models and LoRAs whose merged weights are worked out by hand (not with the merge's own
/// formula): alpha over rank, each LoRA's weight, a separate UNet weight, conv factors, what is kept as it was (other
/// weights, integer tensors, files, metadata), fp16 output, and every refusal with its whole message.
/// </summary>
public class LoraCheckpointMergeRuleTests
{
    private static Tensor T(float[] values, params long[] shape) => torch.tensor(values).reshape(shape);

    /// <summary>
    /// A diffusers folder: unet (a linear layer, a 3x3 conv, a layer no LoRA touches, an integer buffer, fp32 and bf16),
    /// text encoder, VAE, tokenizer and configs.
    /// </summary>
    private static string Model(TempDir dir)
    {
        var root = dir.File("model");
        foreach (var sub in new[] { "unet", "text_encoder", "vae", "tokenizer" }) Directory.CreateDirectory(Path.Combine(root, sub));
        File.WriteAllText(Path.Combine(root, "model_index.json"), "{\"_class_name\": \"StableDiffusionPipeline\"}");
        File.WriteAllText(Path.Combine(root, "unet", "config.json"), "{\"sample_size\": 8}");
        File.WriteAllText(Path.Combine(root, "tokenizer", "merges.txt"), "#version: 0.2\na b\n");
        Safetensors.Save(Path.Combine(root, "unet", "diffusion_pytorch_model.safetensors"), new Dictionary<string, Tensor>
        {
            ["a.to_q.weight"] = T([1, 2, 3, 4], 2, 2),
            ["a.conv.weight"] = torch.zeros(2, 1, 3, 3),
            ["b.to_k.weight"] = T([5, 6, 7, 8], 2, 2).to(ScalarType.BFloat16),
            ["position_ids"] = torch.arange(3, dtype: ScalarType.Int64),
        }, new Dictionary<string, string> { ["format"] = "pt" });
        Safetensors.Save(Path.Combine(root, "text_encoder", "model.safetensors"), new Dictionary<string, Tensor>
        {
            ["text_model.q_proj.weight"] = T([1, 0, 0, 1], 2, 2),
        });
        Safetensors.Save(Path.Combine(root, "vae", "diffusion_pytorch_model.safetensors"), new Dictionary<string, Tensor>
        {
            ["decoder.conv.weight"] = T([0.1f, 0.2f], 2),
        });
        return root;
    }

    /// <summary>
    /// LoRA 1: to_q rank 1 alpha 0.5 (factor 0.5), the text encoder's q_proj without alpha (factor 1), the conv with
    /// alpha 2 and rank 1 (factor 2). LoRA 2: to_q rank 1 alpha 1.
    /// </summary>
    private static (string First, string Second) Loras(TempDir dir) => (
        dir.SaveSafetensors("first.safetensors", new Dictionary<string, Tensor>
        {
            ["lora_unet_a_to_q.lora_up.weight"] = T([1, 2], 2, 1),
            ["lora_unet_a_to_q.lora_down.weight"] = T([3, 4], 1, 2),
            ["lora_unet_a_to_q.alpha"] = torch.tensor(0.5f),
            ["lora_te_text_model_q_proj.lora_up.weight"] = T([1, 0], 2, 1),
            ["lora_te_text_model_q_proj.lora_down.weight"] = T([1, 1], 1, 2),
            ["lora_unet_a_conv.lora_up.weight"] = T([1, -1], 2, 1, 1, 1),
            ["lora_unet_a_conv.lora_down.weight"] = T([1, 2, 3, 4, 5, 6, 7, 8, 9], 1, 1, 3, 3),
            ["lora_unet_a_conv.alpha"] = torch.tensor(2f),
        }),
        dir.SaveSafetensors("second.safetensors", new Dictionary<string, Tensor>
        {
            ["lora_unet_a_to_q.lora_up.weight"] = T([1, 1], 2, 1),
            ["lora_unet_a_to_q.lora_down.weight"] = T([1, 0], 1, 2),
            ["lora_unet_a_to_q.alpha"] = torch.tensor(1f),
        }));

    private static float[] Values(SafetensorsFile file, string key) => file.Load(key, ScalarType.Float32).flatten().data<float>().ToArray();

    [Fact]
    public void A_folder_merge_adds_each_delta_times_its_weight_and_alpha_over_rank()
    {
        using var dir = Fixtures.TempDir();
        var model = Model(dir);
        var (first, second) = Loras(dir);
        var output = dir.File("merged");

        // First LoRA: text encoder at 2, UNet at 0.5; second at -1 everywhere.
        var report = LoraCheckpointMerge.Merge(model, [new LoraUse(first, 2, UNetWeight: 0.5), new LoraUse(second, -1)], output);

        Assert.Equal(output, report.Output);
        Assert.Equal(3, report.LayersChanged);
        Assert.Equal(2, report.Matches.Count);
        using var unet = SafetensorsFile.Open(Path.Combine(output, "unet", "diffusion_pytorch_model.safetensors"));
        // W + 0.5 * 0.5 * [[3, 4], [6, 8]] - 1 * 1 * [[1, 0], [1, 0]]
        Assert.Equal([0.75f, 3f, 3.5f, 6f], Values(unet, "a.to_q.weight"));
        // 0 + 0.5 * 2 * up[o] * down[i, kh, kw]: filter 0 is the down kernel, filter 1 its negative.
        Assert.Equal([1f, 2, 3, 4, 5, 6, 7, 8, 9, -1, -2, -3, -4, -5, -6, -7, -8, -9], Values(unet, "a.conv.weight"));
        Assert.Equal([5f, 6, 7, 8], Values(unet, "b.to_k.weight"));
        Assert.Equal([0L, 1, 2], unet.Load("position_ids").data<long>().ToArray());
        // Each tensor keeps its dtype, and the file its metadata plus the LoRAs merged into it, in order.
        Assert.Equal(["F32", "F32", "BF16", "I64"], new[] { "a.to_q.weight", "a.conv.weight", "b.to_k.weight", "position_ids" }.Select(k => unet[k].DType));
        Assert.Equal("pt", unet.Metadata["format"]);
        Assert.Equal("first.safetensors, second.safetensors", unet.Metadata["sdlora_merged_loras"]);

        using var te = SafetensorsFile.Open(Path.Combine(output, "text_encoder", "model.safetensors"));
        // [[1, 0], [0, 1]] + 2 * 1 * [[1, 1], [0, 0]]
        Assert.Equal([3f, 2, 0, 1], Values(te, "text_model.q_proj.weight"));

        // Everything else is copied as it was.
        foreach (var rel in new[] { "model_index.json", "unet/config.json", "tokenizer/merges.txt", "vae/diffusion_pytorch_model.safetensors" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(model, rel)), File.ReadAllBytes(Path.Combine(output, rel)));
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path, ".merged*"));
    }

    [Fact]
    public void A_fp16_merge_rounds_every_float_weight_once_and_keeps_integers()
    {
        using var dir = Fixtures.TempDir();
        var model = Model(dir);
        var (first, _) = Loras(dir);
        var output = dir.File("merged16");

        LoraCheckpointMerge.Merge(model, [new LoraUse(first, 1)], output, fp16: true);

        using var unet = SafetensorsFile.Open(Path.Combine(output, "unet", "diffusion_pytorch_model.safetensors"));
        Assert.Equal(["F16", "F16", "F16", "I64"], new[] { "a.to_q.weight", "a.conv.weight", "b.to_k.weight", "position_ids" }.Select(k => unet[k].DType));
        // 1 + 0.5 * 3 etc., all exact in fp16.
        Assert.Equal([2.5f, 4f, 6f, 8f], Values(unet, "a.to_q.weight"));
        using var vae = SafetensorsFile.Open(Path.Combine(output, "vae", "diffusion_pytorch_model.safetensors"));
        Assert.Equal("F16", vae["decoder.conv.weight"].DType);
        Assert.Equal(new[] { 0.1f, 0.2f }.Select(v => (float)(Half)v), Values(vae, "decoder.conv.weight"));
    }

    [Fact]
    public void A_single_file_merge_keeps_the_file_keys_and_leaves_unmapped_tensors_alone()
    {
        using var dir = Fixtures.TempDir();
        var (first, _) = Loras(dir);
        var checkpoint = dir.SaveSafetensors("model.safetensors", new Dictionary<string, Tensor>
        {
            ["model.q.weight"] = T([1, 2, 3, 4], 2, 2),
            ["first_stage_model.w"] = T([1, 2, 3, 4], 2, 2),
        });
        // The file's own names: model.q.weight is the UNet's a.to_q; the VAE tensor maps to nothing.
        string? Map(string key) => key == "model.q.weight" ? "unet.a.to_q.weight" : null;

        var report = LoraCheckpointMerge.MergeSingleFile(checkpoint, Map, [new LoraUse(first, 2)], dir.File("out.safetensors"));

        Assert.Equal(1, report.LayersChanged);
        using var merged = SafetensorsFile.Open(dir.File("out.safetensors"));
        Assert.Equal(["first_stage_model.w", "model.q.weight"], merged.Keys.Order(StringComparer.Ordinal));
        Assert.Equal([4f, 6f, 9f, 12f], Values(merged, "model.q.weight")); // W + 2 * 0.5 * [[3, 4], [6, 8]]
        Assert.Equal([1f, 2f, 3f, 4f], Values(merged, "first_stage_model.w"));
    }

    [Fact]
    public void A_cancelled_folder_merge_leaves_neither_output_nor_temporary_folder()
    {
        using var dir = Fixtures.TempDir();
        var model = Model(dir);
        var (first, _) = Loras(dir);
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();

        Assert.ThrowsAny<OperationCanceledException>(() => LoraCheckpointMerge.Merge(model, [new LoraUse(first)], dir.File("merged"), cancellation: cancel.Token));

        Assert.False(Directory.Exists(dir.File("merged")));
        Assert.Equal(["first.safetensors", "model", "second.safetensors"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void An_existing_output_is_replaced_only_when_asked()
    {
        using var dir = Fixtures.TempDir();
        var model = Model(dir);
        var (first, second) = Loras(dir);
        var output = dir.File("merged");
        LoraCheckpointMerge.Merge(model, [new LoraUse(first)], output);

        var ex = Assert.Throws<SdLoraException>(() => LoraCheckpointMerge.Merge(model, [new LoraUse(second)], output));
        Assert.Contains("already exists", ex.Message);

        LoraCheckpointMerge.Merge(model, [new LoraUse(second)], output, overwrite: true);
        using var unet = SafetensorsFile.Open(Path.Combine(output, "unet", "diffusion_pytorch_model.safetensors"));
        Assert.Equal("second.safetensors", unet.Metadata["sdlora_merged_loras"]);
        Assert.Equal([2f, 2f, 4f, 4f], Values(unet, "a.to_q.weight"));
    }

    public static TheoryData<string, string> Refusals() => new()
    {
        { "missing", "{0}/missing: not found; pass a diffusers folder or a .safetensors/.ckpt checkpoint" },
        { "empty-folder", "{0}/empty-folder: is not a diffusers model folder (no model_index.json or unet/); pass the folder that contains unet/ and text_encoder/" },
        { "no-weights", "{0}/no-weights: has no unet/*.safetensors or text_encoder/*.safetensors weights; sdlora reads safetensors only" },
        { "ckpt-output", "{0}/out.ckpt: sdlora writes merged single-file models as safetensors; name the output NAME.safetensors" },
        { "no-lora", "no LoRA given: name at least one LoRA file (FILE[:WEIGHT])" },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public void Merge_refuses_bad_input_with_one_line_naming_the_fix(string what, string message)
    {
        using var dir = Fixtures.TempDir();
        var (first, _) = Loras(dir);
        Directory.CreateDirectory(dir.File("empty-folder"));
        Directory.CreateDirectory(dir.File("no-weights/unet"));
        var checkpoint = dir.SaveSafetensors("model.safetensors", new Dictionary<string, Tensor> { ["w"] = torch.zeros(2, 2) });
        List<LoraUse> loras = what == "no-lora" ? [] : [new LoraUse(first)];

        var ex = Assert.Throws<SdLoraException>(() => what switch
        {
            "ckpt-output" => LoraCheckpointMerge.Merge(checkpoint, loras, dir.File("out.ckpt")),
            "no-lora" => LoraCheckpointMerge.Merge(Model(dir), loras, dir.File("out")),
            _ => LoraCheckpointMerge.Merge(dir.File(what), loras, dir.File("out")),
        });

        Assert.Equal(string.Format(message, dir.Path), ex.Message);
        Assert.False(Directory.Exists(dir.File("out")));
    }
}
