using System.Security.Cryptography;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

public class LoraFileTests
{
    private static void RandomizeUps(LoraNetwork n) { using var _ = torch.no_grad(); foreach (var m in n.Modules) m.UpWeight.normal_(0, 0.3); }

    private static string DataSectionSha256(string path)
    {
        var bytes = File.ReadAllBytes(path);
        long n = BitConverter.ToInt64(bytes, 0);
        return Convert.ToHexStringLower(SHA256.HashData(bytes.AsSpan((int)(8 + n))));
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float16)]
    public void Save_then_load_gives_identical_tensors_and_metadata(ScalarType dtype)
    {
        var (unet, te) = FakeModels.Small();
        using var net = LoraNetwork.Create(unet, te, new LoraNetworkOptions { UnetTargets = LoraUnetTargets.KohyaDefault | LoraUnetTargets.Convs, ConvRank = 2, Alpha = 2 });
        RandomizeUps(net);
        using var dir = Fixtures.TempDir();
        var path = dir.File("a.safetensors");
        var md = KohyaMetadata.Build(4, 2, 2, 1, "a", "tiny.safetensors", 2);
        var written = net.Save(path, md, dtype);

        using var file = LoraFile.Read(path);
        Assert.Equal(written, file.Metadata);
        Assert.Equal("4", file.Metadata["ss_network_dim"]);
        Assert.Equal("2.0", file.Metadata["ss_network_alpha"]);
        Assert.Equal("{\"conv_dim\": \"2\", \"conv_alpha\": \"1.0\"}", file.Metadata["ss_network_args"]);
        Assert.Equal(DataSectionSha256(path), file.Metadata["sshs_model_hash"]);
        Assert.Equal(LoraDialect.Kohya, file.Dialect);
        Assert.Equal(net.Modules.Count, file.Modules.Count);
        foreach (var m in net.Modules)
        {
            var w = file.Modules.Single(x => x.Stem == m.LoraName);
            Assert.True(torch.equal(m.DownWeight.to(dtype).to(ScalarType.Float32), w.Down).all().item<bool>(), m.LoraName);
            Assert.True(torch.equal(m.UpWeight.to(dtype).to(ScalarType.Float32), w.Up).all().item<bool>(), m.LoraName);
            Assert.Equal(m.Alpha, w.Alpha);
        }
        // Loaded back onto the same model: same modules, same weights.
        using var again = LoraNetwork.FromFile(path, unet, te);
        Assert.Empty(again.Match!.UnmatchedKeys);
        Assert.Equal(net.Modules.Select(m => m.LoraName).Order(), again.Modules.Select(m => m.LoraName).Order());
    }

    [Fact]
    public void Kohya_hashes_match_values_computed_independently()
    {
        // Expected values: Python hashlib over bytes built with struct/json (see docs/formats.md, "Hashes").
        var tensors = new Dictionary<string, Tensor>
        {
            ["big"] = torch.arange(300000, dtype: ScalarType.Float32) * 0.5f,
            ["b.weight"] = torch.tensor(new float[] { 1.0f, -2.5f }),
            ["a.weight"] = torch.tensor(new float[] { 0.5f, 0.25f, 3.0f }),
        };
        var md = new Dictionary<string, string> { ["ss_network_dim"] = "4", ["ss_output_name"] = "café \"x\"", ["other"] = "not hashed" };
        var (model, legacy) = KohyaHashes.Compute(tensors, md);
        Assert.Equal("3450dce7576e724eed7224906c0f11f483f3c5a05a3bbf8bbbf8076bdf5acafc", model);
        Assert.Equal("d31debe4", legacy);
        tensors.Remove("big");
        var (small, smallLegacy) = KohyaHashes.Compute(tensors, md);
        Assert.Equal("97f3700c9f5db515b8de08b1218ab024ff330ed0fe2d91997d70052ce886b54a", small);
        Assert.Equal("e3b0c442", smallLegacy); // file shorter than 1 MiB: sha256 of nothing
    }

    [Theory]
    [InlineData("plainx", "45465b3c")] // header 881 bytes, padded to 888: one escape fewer would pad to 880
    [InlineData("plain", "a7a96e42")]  // header exactly 880 bytes: no padding
    public void Kohya_hashes_order_every_dtype_as_the_Rust_writer_and_escape_metadata_as_serde_json(string filler, string legacy)
    {
        // Expected values: Python (struct, json.dumps(ensure_ascii=False, compact), hashlib) over the file the Rust
        // safetensors writer would produce: tensors by dtype (I64, F64, F32, I32, BF16, F16, I16, I8, U8, BOOL), then name;
        // only ss_* metadata. The 1.2 MB ramp puts the legacy window (1 MiB + 64 KiB) in data that the header's length shifts.
        var tensors = new Dictionary<string, Tensor>
        {
            ["s.bool"] = torch.tensor(new[] { true }),
            ["v.u8"] = torch.tensor(new byte[] { 1, 2, 3 }),
            ["q.i8"] = torch.tensor(new[] { -3 }).to(ScalarType.Int8),
            ["r.i16"] = torch.tensor(new short[] { 5 }),
            ["z.f16"] = torch.tensor(new[] { 1.0f, -2.0f }).to(ScalarType.Float16),
            ["y.bf16"] = torch.tensor(new[] { 1.0f, 0.5f }).to(ScalarType.BFloat16),
            ["t.i32"] = torch.tensor(new[] { -1 }),
            ["big"] = torch.arange(300000, dtype: ScalarType.Float32) * 0.5f,
            ["x.f32"] = torch.tensor(new[] { 3.0f }),
            ["a.f32"] = torch.tensor(new[] { 1.5f, -1.0f }),
            ["u.f64"] = torch.tensor(new[] { 0.25 }),
            ["w.i64"] = torch.tensor(new[] { 7L }),
        };
        var md = new Dictionary<string, string> { ["ss_zzz"] = filler, ["ss_output_name"] = "a\"b\\c\nd\re\tf\bg\fh\u0001i é", ["not_ss"] = "ignored" };

        var (model, legacyHash) = KohyaHashes.Compute(tensors, md);

        Assert.Equal("c4d0863e852e77c4adbd500756da08e4f1fe9c109d0c2ef18ad2879700390cbd", model);
        Assert.Equal(legacy, legacyHash);
        Assert.Equal(["w.i64", "u.f64", "a.f32", "big", "x.f32", "t.i32", "y.bf16", "z.f16", "r.i16", "q.i8", "v.u8", "s.bool"],
            KohyaHashes.WriterOrder(tensors).Select(kv => kv.Key));
    }

    [Fact]
    public void Golden_kohya_lora_matches_every_module_of_the_tiny_model()
    {
        using var unet = FakeModels.FromCheckpoint(Fixtures.CopiedSet("tiny-sd15/unet/diffusion_pytorch_model.safetensors"));
        using var te = FakeModels.FromCheckpoint(Fixtures.CopiedSet("tiny-sd15/text_encoder/model.safetensors"));
        using var net = LoraNetwork.FromFile(Fixtures.CopiedSet("lora_kohya_tiny.safetensors"), unet, te, 0.5);
        Assert.Empty(net.Match!.UnmatchedKeys);
        Assert.Equal(192, net.UnetModules.Count());
        Assert.Equal(18, net.TextEncoderModules.Count());
        Assert.All(net.Modules, m => Assert.Equal(0.5, m.Scale));
    }

    [Fact]
    public void Lora_written_for_the_tiny_model_has_zero_unmatched_keys_under_the_a1111_rule()
    {
        using var unet = FakeModels.FromCheckpoint(Fixtures.CopiedSet("tiny-sd15/unet/diffusion_pytorch_model.safetensors"));
        using var te = FakeModels.FromCheckpoint(Fixtures.CopiedSet("tiny-sd15/text_encoder/model.safetensors"));
        using var net = LoraNetwork.Create(unet, te, new LoraNetworkOptions { UnetTargets = LoraUnetTargets.KohyaDefault | LoraUnetTargets.Convs, ConvRank = 2 });
        using var dir = Fixtures.TempDir();
        var path = dir.File("tiny.safetensors");
        net.Save(path, KohyaMetadata.Build(4, 1, 2, 1));
        // A1111 / ComfyUI / sd.cpp rule: name = prefix + module path with '.' -> '_', suffixes .lora_down.weight/.lora_up.weight/.alpha
        using var ckptUnet = SafetensorsFile.Open(Fixtures.CopiedSet("tiny-sd15/unet/diffusion_pytorch_model.safetensors"));
        using var ckptTe = SafetensorsFile.Open(Fixtures.CopiedSet("tiny-sd15/text_encoder/model.safetensors"));
        var expected = ckptUnet.Keys.Where(k => k.EndsWith(".weight")).Select(k => "lora_unet_" + k[..^7].Replace('.', '_'))
            .Concat(ckptTe.Keys.Where(k => k.EndsWith(".weight")).Select(k => "lora_te_" + k[..^7].Replace('.', '_'))).ToHashSet();
        using var file = SafetensorsFile.Open(path);
        var stems = file.Keys.Select(k => k.EndsWith(".lora_down.weight") ? k[..^17] : k.EndsWith(".lora_up.weight") ? k[..^15] : k.EndsWith(".alpha") ? k[..^6] : "?" + k).ToList();
        Assert.All(stems, s => Assert.Contains(s, expected));
        Assert.Equal(3 * net.Modules.Count, file.Keys.Count());
        Assert.Contains("lora_unet_down_blocks_0_resnets_0_conv1", stems);
        Assert.Contains("lora_unet_up_blocks_1_upsamplers_0_conv", stems);
        // And sdlora's own loader matches it against the checkpoint's parameter names (the merge path).
        var index = LoraTargetIndex.FromParameters(ckptUnet.Entries.Select(e => ("unet." + e.Name, e.Shape)).Concat(ckptTe.Entries.Select(e => ("text_encoder." + e.Name, e.Shape))));
        using var lora = LoraFile.Read(path);
        var match = LoraMatcher.Match(lora, index);
        Assert.Empty(match.UnmatchedKeys);
        Assert.Equal(net.Modules.Count, match.Matched.Count);
    }

    [Fact]
    public void Ldm_named_kohya_keys_resolve_through_the_module_path_hook()
    {
        var (unet, _) = FakeModels.Small();
        using var dir = Fixtures.TempDir();
        var path = dir.File("ldm.safetensors");
        Safetensors.Save(path, new Dictionary<string, Tensor>
        {
            ["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch.randn(2, 8),
            ["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight"] = torch.randn(8, 2),
            ["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.alpha"] = torch.tensor(1.0f),
            ["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"] = torch.randn(2, 8, 1, 1),
            ["lora_unet_input_blocks_1_1_proj_in.lora_up.weight"] = torch.randn(8, 2, 1, 1),
            ["lora_unet_input_blocks_9_9_nowhere.lora_down.weight"] = torch.randn(2, 8),
            ["lora_unet_input_blocks_9_9_nowhere.lora_up.weight"] = torch.randn(8, 2),
        });
        string? Map(string ldm) => ldm.StartsWith("input_blocks.1.1.") ? "down_blocks.0.attentions.0." + ldm["input_blocks.1.1.".Length..] : null;
        // The default hook is the real LDM key map, which resolves the same names.
        using (var byDefault = LoraNetwork.FromFile(path, unet, null))
            Assert.Equal(2, byDefault.Modules.Count);
        using var net = LoraNetwork.FromFile(path, unet, null, 1.0, Map);
        Assert.True(net.Match!.UsedLdmNames);
        Assert.Equal(2, net.Modules.Count);
        Assert.Equal(0.5, net.Modules.Single(m => m.LoraName.EndsWith("to_q")).Scale);
        Assert.Equal(["lora_unet_input_blocks_9_9_nowhere.lora_down.weight"], net.Match.UnmatchedKeys);
        Assert.Contains("1 LoRA keys match no layer", net.Match.Warning);
    }

    [Fact]
    public void Peft_and_diffusers_keys_load_with_alpha_from_config_or_rank()
    {
        var (unet, te) = FakeModels.Small();
        using var dir = Fixtures.TempDir();
        var path = dir.File("peft.safetensors");
        Safetensors.Save(path, new Dictionary<string, Tensor>
        {
            ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"] = torch.randn(4, 8),
            ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"] = torch.randn(8, 4),
            ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight"] = torch.randn(4, 8),
            ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora.up.weight"] = torch.randn(8, 4),
            ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight"] = torch.randn(4, 8),
            ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight"] = torch.randn(8, 4),
            ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight"] = torch.randn(4, 6),
            ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight"] = torch.randn(6, 4),
        });
        using (var net = LoraNetwork.FromFile(path, unet, te))
        {
            Assert.Empty(net.Match!.UnmatchedKeys);
            Assert.Equal(4, net.Modules.Count);
            Assert.All(net.Modules, m => Assert.Equal(1.0, m.Scale));
            Assert.Contains(net.Modules, m => m.LoraName == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0");
        }
        File.WriteAllText(dir.File("adapter_config.json"), "{\"r\": 4, \"lora_alpha\": 8}");
        using var withConfig = LoraNetwork.FromFile(path, unet, te);
        Assert.All(withConfig.Modules, m => Assert.Equal(2.0, m.Scale));
        Assert.Equal(LoraDialect.Diffusers, LoraInspector.Inspect(path).Dialect);
    }

    [Fact]
    public void Bad_lora_files_fail_with_the_file_and_first_offending_key()
    {
        var (unet, te) = FakeModels.Small();
        using var dir = Fixtures.TempDir();
        const string q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";

        var full = Fixtures.CopiedSet("tiny-sd15-ldm.safetensors");
        var e = Assert.Throws<SdLoraException>(() => LoraFile.Read(full));
        Assert.Contains("tiny-sd15-ldm.safetensors: is a full model checkpoint", e.Message);

        var sdxl = dir.SaveSafetensors("xl.safetensors", new() { ["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.randn(2, 6), ["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.randn(6, 2) });
        e = Assert.Throws<SdLoraException>(() => LoraFile.Read(sdxl));
        Assert.Contains("xl.safetensors: is a LoRA for SDXL", e.Message);

        var v2 = dir.SaveSafetensors("v2.safetensors", new() { [q + ".lora_down.weight"] = torch.randn(2, 8), [q + ".lora_up.weight"] = torch.randn(8, 2) }, new() { ["ss_v2"] = "True", ["ss_base_model_version"] = "sd_v2" });
        e = Assert.Throws<SdLoraException>(() => LoraFile.Read(v2));
        Assert.Contains("v2.safetensors: is a LoRA for Stable Diffusion 2.x", e.Message);

        var nan = dir.SaveSafetensors("nan.safetensors", new() { [q + ".lora_down.weight"] = torch.tensor(new float[] { 1, float.NaN }).reshape(1, 2).expand(2, 2).mul(1).reshape(2, 2).repeat(1, 4), [q + ".lora_up.weight"] = torch.randn(8, 2) });
        e = Assert.Throws<SdLoraException>(() => LoraFile.Read(nan));
        Assert.Contains($"nan.safetensors: tensor '{q}.lora_down.weight' contains NaN or Inf", e.Message);

        var shape = dir.SaveSafetensors("shape.safetensors", new() { [q + ".lora_down.weight"] = torch.randn(2, 768), [q + ".lora_up.weight"] = torch.randn(8, 2) });
        e = Assert.Throws<SdLoraException>(() => LoraNetwork.FromFile(shape, unet, te));
        Assert.Contains($"shape.safetensors: '{q}.lora_down.weight' does not fit layer 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q'", e.Message);

        var other = dir.SaveSafetensors("other.safetensors", new() { ["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"] = torch.randn(2, 8), ["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] = torch.randn(8, 2) });
        e = Assert.Throws<SdLoraException>(() => LoraNetwork.FromFile(other, unet, te));
        Assert.Contains("other.safetensors: none of its 1 LoRA modules matches a layer of the model", e.Message);
    }
}
