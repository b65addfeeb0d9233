using SdLora.IO;
using SdLora.Lora;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>
/// What `lora inspect` reports about a hand-made file (each module's kind, rank, alpha and shapes, the split, the
/// parameter count, unknown keys, the words that come with it), and how `LoraModelSource` names a model's weights.
/// </summary>
public class LoraInspectorTests
{
    [Fact]
    public void Inspect_reports_every_module_as_stored_and_the_words_that_come_with_the_file()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.SaveSafetensors("style.safetensors", new Dictionary<string, Tensor>
        {
            ["lora_unet_a_to_q.lora_down.weight"] = torch.zeros(2, 6),
            ["lora_unet_a_to_q.lora_up.weight"] = torch.zeros(5, 2),
            ["lora_unet_a_to_q.alpha"] = torch.tensor(1f),
            ["lora_unet_b_conv1.lora_down.weight"] = torch.zeros(3, 4, 3, 1),
            ["lora_unet_b_conv1.lora_up.weight"] = torch.zeros(8, 3, 1, 1),
            ["lora_unet_b_conv1.alpha"] = torch.tensor(0f),
            ["lora_unet_b_proj_in.lora_down.weight"] = torch.zeros(4, 8, 1, 1),
            ["lora_unet_b_proj_in.lora_up.weight"] = torch.zeros(8, 4, 1, 1),
            ["lora_unet_b_proj_in.alpha"] = torch.tensor(16f),
            ["lora_te_text_model_q_proj.lora_down.weight"] = torch.zeros(1, 7),
            ["lora_te_text_model_q_proj.lora_up.weight"] = torch.zeros(7, 1),
            ["bundle_emb.cat.string_to_param.*"] = torch.zeros(2, 7),
        }, new Dictionary<string, string> { ["ss_network_dim"] = "2" });
        Directory.CreateDirectory(LoraEmbeddings.FolderBeside(path));
        Safetensors.Save(LoraEmbeddings.FileBeside(path, "sks"), new Dictionary<string, Tensor> { ["emb_params"] = torch.zeros(3, 7) });

        var info = LoraInspector.Inspect(path);

        Assert.Equal(LoraDialect.Kohya, info.Dialect);
        Assert.Equal("F32", info.DType);
        Assert.Equal(new FileInfo(path).Length, info.FileSize);
        Assert.Equal("2", info.Metadata["ss_network_dim"]);
        Assert.Empty(info.UnknownKeys);
        var modules = info.Modules.OrderBy(m => m.Name, StringComparer.Ordinal).Select(m =>
            $"{m.Name} {m.Part} {m.Kind} rank {m.Rank} alpha {m.Alpha} down [{string.Join(",", m.DownShape)}] up [{string.Join(",", m.UpShape)}]");
        Assert.Equal([
            "lora_te_text_model_q_proj TextEncoder linear rank 1 alpha 1 down [1,7] up [7,1]", // no alpha: rank
            "lora_unet_a_to_q Unet linear rank 2 alpha 1 down [2,6] up [5,2]",
            "lora_unet_b_conv1 Unet conv3x1 rank 3 alpha 3 down [3,4,3,1] up [8,3,1,1]", // alpha 0: rank, as kohya
            "lora_unet_b_proj_in Unet conv1x1 rank 4 alpha 16 down [4,8,1,1] up [8,4,1,1]",
        ], modules);
        Assert.Equal((3, 1), (info.UnetModules, info.TextEncoderModules));
        Assert.Equal(12 + 10 + 36 + 24 + 32 + 32 + 7 + 7, info.ParameterCount);
        Assert.Equal(["cat 2 bundled in the file", $"sks 3 {Path.Combine("style.embeddings", "sks.safetensors")}"],
            info.Words!.OrderBy(w => w.Word, StringComparer.Ordinal).Select(w => $"{w.Word} {w.Vectors} {w.Source}"));
    }

    [Fact]
    public void Inspect_lists_keys_that_are_no_lora_factor()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.SaveSafetensors("odd.safetensors", new Dictionary<string, Tensor>
        {
            ["lora_unet_a_to_q.lora_down.weight"] = torch.zeros(2, 6).to(ScalarType.Float16),
            ["lora_unet_a_to_q.lora_up.weight"] = torch.zeros(5, 2).to(ScalarType.Float16),
            ["something_else.weight"] = torch.zeros(2).to(ScalarType.Float16),
        });

        var info = LoraInspector.Inspect(path);

        Assert.Equal("F16", info.DType);
        Assert.Equal(["something_else.weight"], info.UnknownKeys);
        Assert.Empty(info.Words!);
    }

    [Fact]
    public void A_model_folder_is_one_source_of_prefixed_unet_and_text_encoder_weights()
    {
        using var dir = Fixtures.TempDir();
        Directory.CreateDirectory(dir.File("m/unet"));
        Directory.CreateDirectory(dir.File("m/text_encoder"));
        Directory.CreateDirectory(dir.File("m/vae"));
        dir.SaveSafetensors("m/unet/diffusion_pytorch_model.safetensors", new Dictionary<string, Tensor> { ["a.weight"] = torch.ones(2, 3) });
        dir.SaveSafetensors("m/text_encoder/model.safetensors", new Dictionary<string, Tensor> { ["q.weight"] = torch.full(4, 1, 2f) });
        dir.SaveSafetensors("m/vae/diffusion_pytorch_model.safetensors", new Dictionary<string, Tensor> { ["v.weight"] = torch.ones(1) });

        using var source = LoraModelSource.Open(dir.File("m"));

        Assert.Equal(["text_encoder.q.weight", "unet.a.weight"], source.Keys.Order(StringComparer.Ordinal));
        Assert.True(source.Contains("unet.a.weight"));
        Assert.False(source.Contains("a.weight"));
        Assert.Equal([4L, 1], source.ShapeOf("text_encoder.q.weight"));
        Assert.Equal(2f, source.Load("text_encoder.q.weight").max().item<float>());
        Assert.Equal(ScalarType.Float16, source.Load("unet.a.weight", ScalarType.Float16).dtype);
    }

    [Fact]
    public void A_single_file_is_read_through_the_key_map()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.SaveSafetensors("m.safetensors", new Dictionary<string, Tensor>
        {
            ["model.diffusion_model.x.weight"] = torch.ones(2, 2),
            ["first_stage_model.y.weight"] = torch.ones(2, 2),
        });

        using var source = LoraModelSource.Open(path, key => key.StartsWith("model.diffusion_model.") ? "unet." + key["model.diffusion_model.".Length..] : null);

        Assert.Equal(["unet.x.weight"], source.Keys);
        Assert.Equal([2L, 2], source.ShapeOf("unet.x.weight"));
    }

    [Fact]
    public void Opening_a_model_refuses_what_holds_no_unet_or_text_encoder_weight()
    {
        using var dir = Fixtures.TempDir();
        Directory.CreateDirectory(dir.File("empty/unet"));
        var file = dir.SaveSafetensors("vae-only.safetensors", new Dictionary<string, Tensor> { ["first_stage_model.y.weight"] = torch.ones(2, 2) });

        Assert.Equal($"{dir.File("empty")}: has no unet/*.safetensors or text_encoder/*.safetensors; pass a diffusers model folder",
            Assert.Throws<SdLoraException>(() => LoraModelSource.Open(dir.File("empty"))).Message);
        Assert.Equal($"{file}: no tensor maps to a UNet or text-encoder weight; is it a Stable Diffusion 1.x checkpoint?",
            Assert.Throws<SdLoraException>(() => LoraModelSource.Open(file)).Message);
        Assert.Equal($"{dir.File("gone")}: not found; pass a diffusers model folder or a .safetensors/.ckpt checkpoint",
            Assert.Throws<SdLoraException>(() => LoraModelSource.Open(dir.File("gone"))).Message);
    }
}
