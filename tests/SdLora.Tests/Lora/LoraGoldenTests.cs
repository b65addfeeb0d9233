using System.Globalization;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Tests.Pipelines;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>The fixture LoRA (kohya) on the golden set's tiny model, at each multiplier of lora.json.</summary>
[Trait("Category", "Golden")]
public class LoraGoldenTests(TinyModels models) : IClassFixture<TinyModels>
{
    private static string LoraPath => Fixtures.Golden("lora_kohya_tiny.safetensors");

    /// <summary>lora.json's multipliers with the tensor-name suffix of each (1.0 -> <c>m1</c>, 0.5 -> <c>m0_5</c>).</summary>
    private static (double Multiplier, string Suffix)[] Multipliers()
    {
        using var json = Fixtures.Json("lora");
        return json.RootElement.GetProperty("multipliers").EnumerateArray()
            .Select(m => (m.GetDouble(), "m" + m.GetDouble().ToString("0.###", CultureInfo.InvariantCulture).Replace('.', '_'))).ToArray();
    }

    private static int ModuleCount()
    {
        using var json = Fixtures.Json("lora");
        return json.RootElement.GetProperty("n_lora_modules").EnumerateObject().Sum(p => p.Value.GetInt32());
    }

    private static void AssertOutputs(StableDiffusionModel model, SdLora.IO.SafetensorsFile g, string suffix, string how)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        void Check(string tensor, Tensor actual) =>
            Fixtures.AssertClose(g.Load(tensor), actual, Fixtures.GoldenTolerance("lora", tensor, 1e-4), $"{tensor} ({how})");
        Check("unet_noise_pred_" + suffix, model.UNet.forward(g.Load("unet_sample"), g.Load("unet_timesteps"), g.Load("unet_encoder_hidden_states")));
        if (suffix == "base") return;
        var ids = g.Load("te_input_ids");
        Check("te_last_hidden_state_" + suffix, model.TextEncoder.Encode(ids, 1));
        Check("te_penultimate_normed_" + suffix, model.TextEncoder.Encode(ids, 2));
    }

    [SkippableTheory]
    [InlineData("diffusers")]
    [InlineData("ldm")]
    public void Forward_time_lora_matches_reference_and_detaches_to_exact_base(string layout)
    {
        using var g = Fixtures.Open("lora");
        var model = models.Get(layout);
        foreach (var (multiplier, suffix) in Multipliers())
        {
            using var net = LoraNetwork.FromFile(LoraPath, model.UNet, model.TextEncoder, multiplier);
            Assert.Equal(ModuleCount(), net.Modules.Count);
            Assert.Empty(net.Match!.UnmatchedKeys);
            net.Attach();
            try { AssertOutputs(model, g, suffix, "attached"); }
            finally { net.Detach(); }
            AssertOutputs(model, g, "base", "after detach");
        }
    }

    [SkippableFact]
    public void Merged_lora_matches_reference_and_unmerges()
    {
        using var g = Fixtures.Open("lora");
        var model = models.Diffusers;
        foreach (var (multiplier, suffix) in Multipliers())
        {
            using var before = model.UNet.named_parameters().First(p => p.name.EndsWith("attn1.to_q.weight")).parameter.clone();
            using var net = LoraNetwork.FromFile(LoraPath, model.UNet, model.TextEncoder, multiplier);
            net.Merge();
            try { AssertOutputs(model, g, suffix, "merged"); }
            finally { net.Unmerge(); }
            // Unmerging subtracts what merging added: the base weight comes back to within fp32 rounding of it.
            var after = model.UNet.named_parameters().First(p => p.name.EndsWith("attn1.to_q.weight")).parameter;
            Fixtures.AssertClose(before, after, Tolerance.Golden(1e-6), "unmerged base weight");
            AssertOutputs(model, g, "base", "after unmerge");
        }
    }

    [SkippableFact]
    public void Merging_into_the_ldm_single_file_keeps_its_layout_and_gives_the_lora_outputs()
    {
        using var g = Fixtures.Open("lora");
        var (multiplier, suffix) = Multipliers()[0];
        using var tmp = Fixtures.TempDir();
        var merged = tmp.File("merged.safetensors");
        var yaml = Fixtures.Golden("tiny-sd15-ldm.safetensors")[..^".safetensors".Length] + ".yaml";
        if (File.Exists(yaml)) File.Copy(yaml, tmp.File("merged.yaml"));
        LoraCheckpointMerge.Merge(Fixtures.Golden("tiny-sd15-ldm.safetensors"), [new LoraUse(LoraPath, multiplier)], merged);
        using (var src = SdLora.IO.SafetensorsFile.Open(Fixtures.Golden("tiny-sd15-ldm.safetensors")))
        using (var dst = SdLora.IO.SafetensorsFile.Open(merged))
            Assert.Equal(src.Keys.OrderBy(k => k, StringComparer.Ordinal), dst.Keys.OrderBy(k => k, StringComparer.Ordinal));
        using var model = StableDiffusionModel.Load(merged);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var pred = model.UNet.forward(g.Load("unet_sample"), g.Load("unet_timesteps"), g.Load("unet_encoder_hidden_states"));
        // The file keeps its input's fp16, so each merged weight is rounded once more (2^-11 relative): the outputs
        // move by a few 1e-3 of their scale, so 1e-2 here instead of the README's 1e-4 for fp32 weights.
        Fixtures.AssertClose(g.Load("unet_noise_pred_" + suffix), pred, Tolerance.Golden(1e-2), "UNet with the LoRA merged into the LDM file");
        Fixtures.AssertClose(g.Load("te_last_hidden_state_" + suffix), model.TextEncoder.Encode(g.Load("te_input_ids"), 1), Tolerance.Golden(1e-2), "TE with the LoRA merged into the LDM file");
    }
}

/// <summary>LoRA behaviour on the copied set's tiny model and fixture LoRA (test data, not references).</summary>
public class LoraOnTinyModelTests(CopiedTinyModel tiny) : IClassFixture<CopiedTinyModel>
{
    private static string LoraPath => Fixtures.CopiedSet("lora_kohya_tiny.safetensors");

    [Fact]
    public void Lora_in_a_prompt_tag_is_applied_for_one_generation_only()
    {
        using var tmp = Fixtures.TempDir();
        File.Copy(LoraPath, tmp.File("dog.safetensors"));
        var pipeline = new Txt2ImgPipeline(tiny.Model);
        var o = new Txt2ImgOptions { Prompt = "a dog", Width = 64, Height = 64, Steps = 2, Sampler = "Euler", Seed = 1, LoraDir = tmp.Path };
        var plain = pipeline.Generate(o).Images[0];
        var withLora = pipeline.Generate(o with { Prompt = "a dog <lora:dog:1>" }).Images[0];
        var again = pipeline.Generate(o).Images[0];
        Assert.NotEqual(plain.Image.Pixels, withLora.Image.Pixels);
        Assert.Equal(plain.Image.Pixels, again.Image.Pixels);
        Assert.Single(withLora.Parameters.LoraHashes);
        // <lora:NAME:te:unet>: a UNet weight of 0 with a text-encoder weight of 0 is the base model again.
        var zero = pipeline.Generate(o with { Prompt = "a dog <lora:dog:0:0>" }).Images[0];
        Assert.Equal(plain.Image.Pixels, zero.Image.Pixels);
        var unetOnly = pipeline.Generate(o with { Prompt = "a dog <lora:dog:0:1>" }).Images[0];
        Assert.NotEqual(plain.Image.Pixels, unetOnly.Image.Pixels);
        Assert.NotEqual(withLora.Image.Pixels, unetOnly.Image.Pixels);
        Assert.Equal("dog", withLora.Parameters.LoraHashes[0].Key);
    }

    [Fact]
    public void Lora_written_for_the_tiny_model_maps_every_key_back_with_the_kohya_naming_rule()
    {
        var model = tiny.Model;
        using var tmp = Fixtures.TempDir();
        var options = new LoraNetworkOptions { Rank = 4, Alpha = 2, ConvRank = 2, ConvAlpha = 1, UnetTargets = LoraUnetTargets.KohyaDefault | LoraUnetTargets.Convs };
        using var net = LoraNetwork.Create(model.UNet, model.TextEncoder, options);
        var path = tmp.File("written.safetensors");
        net.Save(path, KohyaMetadata.Build(4, 2, 2, 1, outputName: "written", sdModelName: "tiny-sd15"));
        using var file = LoraFile.Read(path);
        // The rule A1111 / ComfyUI / sd.cpp apply: lora_unet_ / lora_te_ + module path with '.' -> '_'.
        var rule = new System.Text.RegularExpressions.Regex(@"^lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$");
        using (var st = SdLora.IO.SafetensorsFile.Open(path))
            Assert.All(st.Keys, k => Assert.Matches(rule, k));
        using var back = LoraNetwork.FromFile(file, model.UNet, model.TextEncoder);
        Assert.Empty(back.Match!.UnmatchedKeys);
        Assert.Equal(net.Modules.Count, back.Modules.Count);
        Assert.Contains(back.Modules, m => m.Part == LoraPart.TextEncoder);
    }
}
