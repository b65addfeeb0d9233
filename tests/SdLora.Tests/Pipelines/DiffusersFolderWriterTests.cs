using System.Text.Json;
using SdLora.IO;
using SdLora.Models;
using SdLora.Pipelines;
using SdLora.Sampling;
using SdLora.Text;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Pipelines;

public class DiffusersFolderWriterTests
{
    [Fact]
    public void A_written_tokenizer_folder_holds_the_same_vocabulary_and_merges_as_the_reference_one()
    {
        using var dir = Fixtures.TempDir();
        ClipTokenizer.Default.WriteDiffusersFolder(dir.Path);
        var reference = Fixtures.Golden("tiny-sd15/tokenizer");
        var written = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(dir.File("vocab.json")))!;
        var expected = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Path.Combine(reference, "vocab.json")))!;
        Assert.Equal(expected.Count, written.Count);
        Assert.All(expected, kv => Assert.Equal(kv.Value, written[kv.Key]));
        // transformers reads the header line and then the merges, in rank order.
        Assert.Equal(File.ReadAllLines(Path.Combine(reference, "merges.txt")).Skip(1).Take(48894), File.ReadAllLines(dir.File("merges.txt")).Skip(1));
        var reread = ClipTokenizer.FromDiffusersFolder(dir.Path);
        foreach (var prompt in new[] { "a photo of sks shape", "A big RED circle, on the left!", "naïve café 🙂 (masterpiece:1.2)" })
            Assert.Equal(ClipTokenizer.Default.EncodeForModel(prompt), reread.EncodeForModel(prompt));
        using var tokenizerConfig = JsonDocument.Parse(File.ReadAllText(dir.File("tokenizer_config.json")));
        Assert.Equal(77, tokenizerConfig.RootElement.GetProperty("model_max_length").GetInt32());
    }

    [Fact]
    public void A_written_model_folder_loads_back_with_the_same_configs_and_weights()
    {
        using var dir = Fixtures.TempDir();
        var folder = dir.File("model");
        var unetConfig = new UNetConfig(BlockOutChannels: [32, 64], LayersPerBlock: 1, NormNumGroups: 8, CrossAttentionDim: 16, AttentionHeadDim: [2, 4],
            DownBlockTypes: ["CrossAttnDownBlock2D", "DownBlock2D"], UpBlockTypes: ["UpBlock2D", "CrossAttnUpBlock2D"], SampleSize: 8);
        var vaeConfig = new AutoencoderKLConfig(BlockOutChannels: [8, 16], LayersPerBlock: 1, NormNumGroups: 4, SampleSize: 32, ScalingFactor: 0.5);
        var teConfig = new ClipTextConfig(HiddenSize: 16, IntermediateSize: 32, NumHiddenLayers: 1, NumAttentionHeads: 2);
        using var unet = new UNet2DConditionModel(unetConfig);
        using var vae = new AutoencoderKL(vaeConfig);
        using var te = new ClipTextModel(teConfig);
        using var generator = new Generator(7, CPU);
        foreach (var m in new nn.Module[] { unet, vae, te }) ModuleInit.Seeded(m, generator, zeroResidualOutputs: false);
        DiffusersFolderWriter.Write(folder, unet, vae, te, ClipTokenizer.Default, NoiseSchedule.StableDiffusion1, ScalarType.Float16,
            new Dictionary<string, string> { ["README.md"] = "card\n" });

        Assert.Equal("card\n", File.ReadAllText(Path.Combine(folder, "README.md")));
        Assert.DoesNotContain(Directory.GetDirectories(dir.Path), d => Path.GetFileName(d).StartsWith('.')); // no temp folder left
        using (var weights = SafetensorsFile.Open(Path.Combine(folder, "unet", "diffusion_pytorch_model.safetensors")))
            Assert.All(weights.Keys, k => Assert.Equal(ScalarType.Float16, TensorFiles.DTypeOf(weights, k)));

        using var model = StableDiffusionModel.Load(folder);
        Assert.Equal(unetConfig.Channels, model.UNet.Config.Channels);
        Assert.Equal(unetConfig.HeadsPerBlock, model.UNet.Config.HeadsPerBlock);
        Assert.Equal(unetConfig.DownBlocks, model.UNet.Config.DownBlocks);
        Assert.Equal(16, model.UNet.Config.CrossAttentionDim);
        Assert.Equal(0.5, model.Vae.ScalingFactor);
        Assert.Equal(4, model.Vae.Config.NormNumGroups);
        Assert.Equal(16, model.TextEncoder.Config.HiddenSize);
        Assert.Equal(NoiseSchedule.StableDiffusion1.BetaEnd, model.Schedule.BetaEnd);
        foreach (var (written, loaded) in new (nn.Module, nn.Module)[] { (unet, model.UNet), (vae, model.Vae), (te, model.TextEncoder) })
        {
            var expected = written.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            foreach (var (name, p) in loaded.named_parameters())
            {
                using var e = expected[name].to(ScalarType.Float16).to(ScalarType.Float32);
                Assert.True(e.eq(p).all().item<bool>(), name);
            }
        }

        // Written again over itself: replaced whole.
        File.WriteAllText(Path.Combine(folder, "stale.txt"), "x");
        DiffusersFolderWriter.Write(folder, unet, vae, te, ClipTokenizer.Default, NoiseSchedule.StableDiffusion1);
        Assert.False(File.Exists(Path.Combine(folder, "stale.txt")));
    }
}
