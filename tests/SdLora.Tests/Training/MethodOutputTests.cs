using SdLora.Checkpoints;
using SdLora.Imaging;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Pipelines;
using SdLora.Text;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

/// <summary>What DreamBooth and textual-inversion runs write, and that a lent model comes back untouched.</summary>
public class MethodOutputTests
{
    private static Tensor UNetOutput(StableDiffusionModel model)
    {
        using var noGrad = torch.no_grad();
        using var g = new Generator(11, CPU);
        var x = torch.randn([1, 4, 8, 8], generator: g);
        var ids = torch.tensor(model.Tokenizer.EncodeForModel("a photo of a dog"), [1, 77], ScalarType.Int64);
        return model.UNet.forward(x, torch.tensor(new long[] { 500 }), model.TextEncoder.Encode(ids));
    }

    [Fact]
    public void Dreambooth_on_a_single_file_writes_the_same_keys_in_fp16_and_gives_a_lent_model_back()
    {
        using var dir = Fixtures.TempDir();
        // The LDM file needs its YAML for the tiny dims: copied beside a private copy of it.
        var input = dir.File("tiny.safetensors");
        File.Copy(Fixtures.CopiedSet("tiny-sd15-ldm.safetensors"), input);
        File.Copy(Fixtures.CopiedSet("tiny-sd15-ldm.yaml"), dir.File("tiny.yaml"));
        using var model = StableDiffusionModel.Load(input);
        using var before = UNetOutput(model);
        var prompts = dir.File("prompts.txt");
        File.WriteAllText(prompts, "a photo of sks dog --s 2 --d 5\n");
        var config = MethodTrainingTests.DreamBooth(dir, 1, 2) with
        {
            Model = input, SavePrecision = "fp16", TrainTextEncoder = true, SamplePrompts = prompts, SampleEveryNEpochs = 1, SaveEveryNEpochs = 1,
        };
        var result = new DreamBoothTrainingSession(config, model).Run();

        // The lent model computes what it did; its weights are frozen again and hold no gradients.
        using var after = UNetOutput(model);
        Assert.True(torch.equal(before, after).all().item<bool>(), "the lent model's output changed");
        Assert.All(model.UNet.parameters().Concat(model.TextEncoder.parameters()), p => Assert.True(!p.requires_grad && p.grad is null));

        Assert.Equal(Path.Combine(result.OutputDir, "sks.safetensors"), result.OutputFile);
        Assert.Equal([Path.Combine(result.OutputDir, "sks-000001.safetensors"), result.OutputFile!], result.SavedOutputs);
        using (var written = SafetensorsFile.Open(result.OutputFile!))
        using (var source = SafetensorsFile.Open(input))
        {
            Assert.Equal(source.Keys.Order(StringComparer.Ordinal), written.Keys.Order(StringComparer.Ordinal));
            Assert.All(written.Entries, e => Assert.Equal("F16", e.DType));
            Assert.Equal("stable-diffusion-v1", written.Metadata["modelspec.architecture"]);
            Assert.Equal("dreambooth", written.Metadata["sdlora_method"]);
            Assert.Equal("2", written.Metadata["ss_steps"]);
            Assert.False(written.Metadata.ContainsKey("ss_network_dim"));
        }
        Assert.True(File.Exists(Path.Combine(result.OutputDir, "sks.yaml")));

        // It loads (generate, model inspect) and holds the trained weights, rounded to fp16.
        Assert.True(CheckpointInspector.Inspect(result.OutputFile!).Usable);
        using var tuned = StableDiffusionModel.Load(result.OutputFile!);
        using var state = SafetensorsFile.Open(Path.Combine(result.OutputDir, "state", "model.safetensors"));
        foreach (var name in new[] { "conv_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", "conv_out.bias" })
        {
            using var trained = state.Load("unet." + name);
            var loaded = tuned.UNet.named_parameters().Single(p => p.name == name).parameter;
            Assert.True(torch.equal(trained.to(ScalarType.Float16).to(ScalarType.Float32), loaded).all().item<bool>(), name);
        }
        using var te = state.Load("text_encoder.text_model.final_layer_norm.weight");
        Assert.False(torch.equal(te, model.TextEncoder.text_model.final_layer_norm.weight!).all().item<bool>(), "the text encoder was trained");

        // Samples name the fine-tuned model and its hash.
        var sample = GenerationParameters.Parse(PngFile.ReadText(result.Samples.Single(s => s.Contains("_final_")))["parameters"]);
        Assert.Equal(("sks", ModelHashes.A1111ShortHash(result.OutputFile!)), (sample.Model, sample.ModelHash));

        // DreamBooth -> lora extract -> a small LoRA: on the base model it moves the output toward the fine-tune's.
        var extracted = dir.File("extracted.safetensors");
        using (var baseFile = LoraModelSource.Open(input))
        using (var tunedFile = LoraModelSource.Open(result.OutputFile!))
            LoraSvd.ExtractToFile(baseFile, tunedFile, extracted, new LoraExtractOptions { Rank = 8, ConvRank = 8, ClampQuantile = 1 });
        using var target = UNetOutput(tuned);
        using var network = LoraNetwork.FromFile(extracted, model.UNet, model.TextEncoder);
        network.Attach();
        using var withLora = UNetOutput(model);
        network.Detach();
        double Distance(Tensor t) => (t - target).pow(2).mean().item<float>();
        Assert.True(Distance(withLora) < 0.5 * Distance(before), $"extracted LoRA: distance to the fine-tune {Distance(before):G4} -> {Distance(withLora):G4}");
    }

    [Fact]
    public void Textual_inversion_writes_kohya_emb_params_leaves_the_table_alone_and_needs_its_word_in_the_captions()
    {
        using var dir = Fixtures.TempDir();
        using var model = StableDiffusionModel.Load(Fixtures.CopiedSet("tiny-sd15"));
        var table = model.TextEncoder.text_model.embeddings.token_embedding.weight!;
        using var tableBefore = table.clone();
        using var before = UNetOutput(model);
        var config = MethodTrainingTests.Inversion(dir, 1, 2) with { SavePrecision = "fp16", OutputName = null };
        var result = new TextualInversionTrainingSession(config, model).Run();

        Assert.True(torch.equal(tableBefore, table).all().item<bool>(), "the text encoder's table changed");
        Assert.Null(model.TextEncoder.text_model.embeddings.AddedTokens);
        using (var after = UNetOutput(model)) Assert.True(torch.equal(before, after).all().item<bool>());

        Assert.Equal(Path.Combine(result.OutputDir, "sks.safetensors"), result.OutputFile); // named after the word, as A1111 calls it
        using (var f = SafetensorsFile.Open(result.OutputFile!))
        {
            Assert.Equal(["emb_params"], f.Keys);
            Assert.Equal("F16", f["emb_params"].DType);
            Assert.Equal([2L, 32], f["emb_params"].Shape);
            Assert.Equal("stable-diffusion-v1/textual-inversion", f.Metadata["modelspec.architecture"]);
            Assert.Equal("sks", f.Metadata["sdlora_token_string"]);
        }
        using var e = TextualInversionEmbedding.Read(result.OutputFile!);
        using var state = SafetensorsFile.Open(Path.Combine(result.OutputDir, "state", "embedding.safetensors"));
        using var trained = state.Load("emb_params");
        Assert.True(torch.equal(trained.to(ScalarType.Float16).to(ScalarType.Float32), e.Vectors).all().item<bool>());
        using var dog = table[model.Tokenizer.Encode("dog")[0]].unsqueeze(0).expand(2, -1);
        Assert.False(torch.equal(dog, trained).all().item<bool>(), "the vectors moved from the init word's");

        var noWord = config with { Output = dir.File("noword"), InstancePrompt = "a photo of a dog" };
        var error = Assert.Throws<SdLoraException>(() => new TextualInversionTrainingSession(noWord).Run());
        Assert.Equal("token-string", error.Setting);
        Assert.Contains("no caption contains the token string 'sks'", error.Message);
        new TextualInversionTrainingSession(noWord with { Template = "object" }).Run(); // templates supply the word
    }

    [Fact]
    public void Templates_replace_instance_captions_and_spell_out_every_vector()
    {
        var rules = new CaptionProcessor { Templates = ["a photo of a sks sks1", "a rendering of a sks sks1"] };
        var rng = new Random(1);
        Assert.Contains(rules.Process("ignored caption", rng), rules.Templates);
        Assert.Equal("a photo of dog", rules.Process("a photo of dog", rng, isRegularization: true));
        var spelled = new CaptionProcessor { WordReplacement = ("sks", "sks sks1 sks2") };
        Assert.Equal("a photo of sks sks1 sks2 dog, sks sks1 sks2 asks", spelled.Process("a photo of sks dog, SKS asks", new Random(1)));
        Assert.Equal(TextualInversionTrainingSession.ObjectTemplates.Count, TextualInversionTrainingSession.ObjectTemplates.Count(t => t.Contains("{}")));
    }
}
