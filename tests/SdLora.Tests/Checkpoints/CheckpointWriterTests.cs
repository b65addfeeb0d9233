using SdLora.Checkpoints;
using SdLora.IO;
using SdLora.Pipelines;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Checkpoints;

/// <summary>
/// Whole checkpoints written from the tiny reference model in both layouts, from both layouts. Its weights are
/// fp16-exact, so an fp16 copy is lossless: the written model must compute bit for bit what the source does.
/// </summary>
public class CheckpointWriterTests
{
    private static string Ldm => Fixtures.CopiedSet("tiny-sd15-ldm.safetensors");
    private static string Diffusers => Fixtures.CopiedSet("tiny-sd15");

    /// <summary>UNet, text encoder and VAE outputs on fixed inputs.</summary>
    private static Tensor[] Outputs(StableDiffusionModel m)
    {
        using var noGrad = torch.no_grad();
        using var g = new Generator(3, CPU);
        var x = torch.randn([1, 4, 8, 8], generator: g);
        var context = torch.randn([1, 77, m.TextEncoder.Config.HiddenSize], generator: g);
        var ids = torch.tensor(m.Tokenizer.EncodeForModel("a photo of a dog"), [1, 77], ScalarType.Int64);
        return [m.UNet.forward(x, torch.tensor(new long[] { 321 }), context), m.TextEncoder.Encode(ids), m.Vae.Decode(x)];
    }

    private static List<string> Files(string dir) =>
        Directory.GetFiles(dir, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(dir, f)).Order(StringComparer.Ordinal).ToList();

    [Theory]
    [InlineData(true, CheckpointLayout.LdmSingleFile)]
    [InlineData(true, CheckpointLayout.DiffusersFolder)]
    [InlineData(false, CheckpointLayout.DiffusersFolder)]
    [InlineData(false, CheckpointLayout.LdmSingleFile)]
    public void Written_model_computes_what_the_source_does_and_has_the_layout_asked_for(bool fromLdm, CheckpointLayout layout)
    {
        using var dir = Fixtures.TempDir();
        string source = fromLdm ? Ldm : Diffusers;
        string output = layout == CheckpointLayout.LdmSingleFile ? dir.File("model.safetensors") : dir.File("model");
        var metadata = new Dictionary<string, string> { ["modelspec.architecture"] = "stable-diffusion-v1" };
        CheckpointWriter.Write(source, (_, _) => null, output, layout, ScalarType.Float16, metadata);
        // The tiny model's text-encoder dims are not SD1.5's and cannot be read off an LDM file's shapes; its YAML says
        // them (an LDM source's YAML is copied beside by the writer; SD1.5-sized models need none).
        if (!fromLdm && layout == CheckpointLayout.LdmSingleFile) File.Copy(Fixtures.CopiedSet("tiny-sd15-ldm.yaml"), dir.File("model.yaml"));

        using var original = StableDiffusionModel.Load(source);
        using var written = StableDiffusionModel.Load(output);
        Assert.Equal(layout, written.Layout);
        foreach (var ((e, a), part) in Outputs(original).Zip(Outputs(written)).Zip(new[] { "UNet", "text encoder", "VAE" }))
            Assert.True(torch.equal(e, a).all().item<bool>(), $"{source} -> {layout}: {part} outputs differ");

        var report = CheckpointInspector.Inspect(output); // what `sdlora model inspect` shows
        Assert.True(report.Usable, report.WhyNot);
        if (layout == CheckpointLayout.LdmSingleFile)
        {
            using var f = SafetensorsFile.Open(output);
            using var reference = SafetensorsFile.Open(Ldm);
            var expectedKeys = reference.Keys.ToList();
            if (!fromLdm) expectedKeys.Add("cond_stage_model.transformer.text_model.embeddings.position_ids");
            Assert.Equal(expectedKeys.Order(StringComparer.Ordinal), f.Keys.Order(StringComparer.Ordinal));
            Assert.All(f.Entries.Where(e => !e.Name.EndsWith("position_ids")), e => Assert.Equal("F16", e.DType));
            Assert.Equal("stable-diffusion-v1", f.Metadata["modelspec.architecture"]);
            if (fromLdm) Assert.Equal(File.ReadAllText(Fixtures.CopiedSet("tiny-sd15-ldm.yaml")), File.ReadAllText(dir.File("model.yaml")));
        }
        else
        {
            var expected = Files(Diffusers);
            Assert.Equal(expected, Files(output));
            using var unet = SafetensorsFile.Open(Path.Combine(output, "unet", "diffusion_pytorch_model.safetensors"));
            Assert.Equal("pt", unet.Metadata["format"]);
            Assert.Equal("stable-diffusion-v1", unet.Metadata["modelspec.architecture"]);
        }
        Assert.Empty(Directory.GetDirectories(dir.Path, ".*")); // no temporary folder left behind
    }

    [Fact]
    public void Replaced_weights_are_written_in_place_of_the_source_ones()
    {
        using var dir = Fixtures.TempDir();
        using var source = StableDiffusionModel.Load(Ldm);
        using var doubled = source.UNet.conv_in.weight!.detach() * 2;
        using var shifted = source.TextEncoder.text_model.final_layer_norm.bias!.detach() + 0.5;
        Tensor? Replace(ModelPart part, string name) => (part, name) switch
        {
            (ModelPart.UNet, "conv_in.weight") => doubled,
            (ModelPart.TextEncoder, "text_model.final_layer_norm.bias") => shifted,
            _ => null,
        };
        foreach (var layout in new[] { CheckpointLayout.LdmSingleFile, CheckpointLayout.DiffusersFolder })
        {
            var output = layout == CheckpointLayout.LdmSingleFile ? dir.File("m.safetensors") : dir.File("m");
            CheckpointWriter.Write(Ldm, Replace, output, layout, ScalarType.Float32, new Dictionary<string, string>());
            using var written = StableDiffusionModel.Load(output);
            Assert.True(torch.equal(doubled, written.UNet.conv_in.weight!).all().item<bool>(), $"{layout}: conv_in");
            Assert.True(torch.equal(shifted, written.TextEncoder.text_model.final_layer_norm.bias!).all().item<bool>(), $"{layout}: final norm");
            Assert.True(torch.equal(source.UNet.conv_out.weight!, written.UNet.conv_out.weight!).all().item<bool>(), $"{layout}: conv_out kept");
        }
    }
}
