using SdLora.IO;
using SdLora.Lora;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

public class LoraToolsTests
{
    [Fact]
    public void Merge_into_diffusers_folder_applies_weighted_delta_and_keeps_layout()
    {
        using var dir = Fixtures.TempDir();
        var outDir = dir.File("merged");
        var lora = Fixtures.CopiedSet("lora_kohya_tiny.safetensors");
        var report = LoraCheckpointMerge.Merge(Fixtures.CopiedSet("tiny-sd15"), [LoraUse.Parse(lora + ":0.5")], outDir);
        Assert.Empty(report.Matches[0].UnmatchedKeys);
        Assert.Equal(210, report.LayersChanged);
        Assert.True(File.Exists(Path.Combine(outDir, "vae", "config.json")));
        Assert.True(File.Exists(Path.Combine(outDir, "tokenizer", "merges.txt")));

        using var before = SafetensorsFile.Open(Fixtures.CopiedSet("tiny-sd15/unet/diffusion_pytorch_model.safetensors"));
        using var after = SafetensorsFile.Open(Path.Combine(outDir, "unet", "diffusion_pytorch_model.safetensors"));
        using var l = SafetensorsFile.Open(lora);
        Assert.Equal(before.Keys, after.Keys);
        Assert.Equal("F16", after["down_blocks.0.attentions.0.proj_in.weight"].DType);
        const string stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k";
        var expected = before.Load("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", ScalarType.Float32)
            + 0.5 * 0.5 * l.Load(stem + ".lora_up.weight", ScalarType.Float32).mm(l.Load(stem + ".lora_down.weight", ScalarType.Float32));
        var actual = after.Load("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", ScalarType.Float32);
        Fixtures.AssertClose(expected, actual, 1e-3, "merged fp16 weight"); // stored F16: one rounding
        Assert.True(torch.equal(before.Load("conv_in.weight"), after.Load("conv_in.weight")).all().item<bool>());

        var ex = Assert.Throws<SdLoraException>(() => LoraCheckpointMerge.Merge(Fixtures.CopiedSet("tiny-sd15"), [new LoraUse(lora)], outDir));
        Assert.Contains("already exists", ex.Message);
    }

    [Fact]
    public void Lora_weight_spec_parses_optional_weight()
    {
        Assert.Equal(new LoraUse("a.safetensors", 0.7), LoraUse.Parse("a.safetensors:0.7"));
        Assert.Equal(new LoraUse(@"C:\x\a.safetensors", 1.0), LoraUse.Parse(@"C:\x\a.safetensors"));
        Assert.Equal(new LoraUse(@"C:\x\a.safetensors", -0.25), LoraUse.Parse(@"C:\x\a.safetensors:-0.25"));
        Assert.Equal(new LoraUse("a:b.safetensors", 1e-1), LoraUse.Parse("a:b.safetensors:1e-1"));
        Assert.Equal(new LoraUse("a.safetensors:high"), LoraUse.Parse("a.safetensors:high")); // not a number: part of the path
        Assert.Equal(new LoraUse(":0.5"), LoraUse.Parse(":0.5")); // nothing before the colon: a path, not a weight
        Assert.Equal("empty LoRA; write PATH or PATH:WEIGHT, e.g. my-lora.safetensors:0.8", Assert.Throws<SdLoraException>(() => LoraUse.Parse(" ")).Message);
        Assert.Equal("LoRA weight in 'a.safetensors:NaN' is not a finite number; write PATH:0.8", Assert.Throws<SdLoraException>(() => LoraUse.Parse("a.safetensors:NaN")).Message);
        Assert.Equal("LoRA weight in 'a.safetensors:Infinity' is not a finite number; write PATH:0.8", Assert.Throws<SdLoraException>(() => LoraUse.Parse("a.safetensors:Infinity")).Message);
    }

    [Fact]
    public void A_separate_unet_weight_applies_to_unet_modules_only()
    {
        Assert.Equal((0.3, 0.3), (new LoraUse("a", 0.3).WeightFor(isUNet: true), new LoraUse("a", 0.3).WeightFor(isUNet: false)));
        Assert.Equal((0.9, 0.3), (new LoraUse("a", 0.3, 0.9).WeightFor(isUNet: true), new LoraUse("a", 0.3, 0.9).WeightFor(isUNet: false)));
    }

    private static Dictionary<string, Tensor> FakeCheckpoint(int seed)
    {
        torch.manual_seed(seed);
        return new Dictionary<string, Tensor>
        {
            ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"] = torch.randn(24, 16),
            ["unet.down_blocks.0.attentions.0.proj_in.weight"] = torch.randn(16, 16, 1, 1),
            ["unet.down_blocks.0.resnets.0.conv1.weight"] = torch.randn(12, 8, 3, 3),
            ["unet.conv_in.weight"] = torch.randn(8, 4, 3, 3),
            ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight"] = torch.randn(10, 10),
        };
    }

    [Fact]
    public void Extract_recovers_a_known_low_rank_delta_at_the_true_rank()
    {
        var baseW = FakeCheckpoint(1);
        torch.manual_seed(2);
        var delta = new Dictionary<string, Tensor>
        {
            ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"] = torch.randn(24, 3).mm(torch.randn(3, 16)),
            ["unet.down_blocks.0.attentions.0.proj_in.weight"] = torch.randn(16, 2).mm(torch.randn(2, 16)).reshape(16, 16, 1, 1),
            ["unet.down_blocks.0.resnets.0.conv1.weight"] = torch.randn(12, 3).mm(torch.randn(3, 72)).reshape(12, 8, 3, 3),
        };
        var tuned = baseW.ToDictionary(kv => kv.Key, kv => delta.TryGetValue(kv.Key, out var d) ? kv.Value + d : kv.Value.clone());
        using var dir = Fixtures.TempDir();
        var path = dir.File("x.safetensors");
        var reports = LoraSvd.ExtractToFile(new DictionaryTensorSource(baseW, "base"), new DictionaryTensorSource(tuned, "tuned"), path,
            new LoraExtractOptions { Rank = 3, ConvRank = 3, ClampQuantile = 1.0, SaveDType = ScalarType.Float32 });
        Assert.Equal(3, reports.Count); // text encoder unchanged -> left out, as kohya; conv_in is not a target
        Assert.All(reports, r => Assert.True(r.FrobeniusRetained > 0.99999, r.Name));

        using var lora = LoraFile.Read(path);
        Assert.Equal("3", lora.Metadata["ss_network_dim"]);
        foreach (var m in lora.Modules)
        {
            var key = "unet." + m.Stem["lora_unet_".Length..] switch
            {
                "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" => "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                "down_blocks_0_attentions_0_proj_in" => "down_blocks.0.attentions.0.proj_in",
                var s => s.Replace("down_blocks_0_resnets_0_conv1", "down_blocks.0.resnets.0.conv1"),
            } + ".weight";
            var d = delta[key];
            var rebuilt = m.Up.flatten(1).mm(m.Down.flatten(1)).mul((m.Alpha ?? m.Rank) / m.Rank).reshape(d.shape);
            double rel = (rebuilt - d).norm().item<float>() / d.norm().item<float>();
            Assert.True(rel < 1e-4, $"{m.Stem}: relative error {rel:G3}");
        }
    }

    [Fact]
    public void Resize_to_the_true_rank_is_lossless_and_dynamic_reports_energy()
    {
        torch.manual_seed(5);
        using var dir = Fixtures.TempDir();
        var src = dir.File("r8.safetensors");
        // rank-8 factors whose product has rank 3
        var down = torch.randn(3, 20); var up = torch.randn(16, 3);
        var mix = torch.randn(8, 3);
        var down8 = mix.mm(down); var up8 = up.mm(torch.linalg.pinv(mix));
        var convDown = torch.randn(8, 6, 3, 3); var convUp = torch.randn(5, 8, 1, 1);
        KohyaLoraWriter.Save(src,
            KohyaLoraWriter.ModuleTensors("lora_unet_a_to_q", down8, up8, 4).Concat(KohyaLoraWriter.ModuleTensors("lora_unet_b_conv1", convDown, convUp, 8)),
            KohyaMetadata.Build(8, 4), ScalarType.Float32);
        var outPath = dir.File("r3.safetensors");
        var reports = LoraSvd.ResizeFile(src, outPath, new LoraResizeOptions { Rank = 3, ConvRank = 5, SaveDType = ScalarType.Float32 });
        var q = reports.Single(r => r.Name == "lora_unet_a_to_q");
        Assert.Equal((8, 3, 1.5), (q.OldRank, q.NewRank, q.NewAlpha));
        Assert.True(q.FrobeniusRetained > 0.999999);

        using var before = LoraFile.Read(src);
        using var after = LoraFile.Read(outPath);
        Assert.Equal("3", after.Metadata["ss_network_dim"]);
        foreach (var name in new[] { "lora_unet_a_to_q", "lora_unet_b_conv1" })
        {
            var b = before.Modules.Single(m => m.Stem == name); var a = after.Modules.Single(m => m.Stem == name);
            var db = b.Up.flatten(1).mm(b.Down.flatten(1)) * ((b.Alpha ?? b.Rank) / b.Rank);
            var da = a.Up.flatten(1).mm(a.Down.flatten(1)) * ((a.Alpha ?? a.Rank) / a.Rank);
            Fixtures.AssertClose(db, da, 1e-4, name);
        }
        Assert.Equal(new long[] { 5, 6, 3, 3 }, after.Modules.Single(m => m.Stem == "lora_unet_b_conv1").Down.shape);

        var dyn = LoraSvd.ResizeFile(src, dir.File("dyn.safetensors"), new LoraResizeOptions { Rank = 8, Method = LoraResizeMethod.SvFro, Parameter = 0.999 });
        Assert.Equal(3, dyn.Single(r => r.Name == "lora_unet_a_to_q").NewRank);
        Assert.Equal("Dynamic", Safetensors.ReadMetadata(dir.File("dyn.safetensors"))["ss_network_dim"]);
    }

    [Fact]
    public void Inspect_reports_dialect_ranks_and_split()
    {
        var info = LoraInspector.Inspect(Fixtures.CopiedSet("lora_kohya_tiny.safetensors"));
        Assert.Equal(LoraDialect.Kohya, info.Dialect);
        Assert.Equal((192, 18), (info.UnetModules, info.TextEncoderModules));
        Assert.All(info.Modules, m => Assert.Equal((4, 2.0), (m.Rank, m.Alpha)));
        Assert.Equal("F16", info.DType);
        Assert.Contains(info.Modules, m => m.Kind == "conv1x1");
    }
}
