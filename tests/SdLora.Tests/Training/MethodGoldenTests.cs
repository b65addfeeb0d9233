using System.Text.Json;
using SdLora.Models;
using SdLora.Sampling;
using SdLora.Tests.Models;
using SdLora.Text;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

/// <summary>
/// One full DreamBooth step (train_full, golden README section 9) and one textual-inversion step (train_ti, section 10)
/// against diffusers/transformers. The fixtures sum the two examples' losses; <see cref="DiffusionLoss"/> averages over
/// the batch (kohya), so the fixture's loss and gradients are exactly (batch size) x ours. Tolerances are the README's:
/// loss 1e-5 relative, each gradient tensor <c>max|a-b| &lt;= 1e-4 max|b| + 1e-7</c>.
/// </summary>
[Trait("Category", "Golden")]
public class MethodGoldenTests
{
    private const double LossTol = 1e-5, GradTol = 1e-4, GradFloor = 1e-7, OutputTol = 1e-4;

    private static void AssertGradient(Tensor expected, Tensor actual, string what)
    {
        using var scope = torch.NewDisposeScope();
        var e = expected.to(ScalarType.Float64);
        var a = actual.to(ScalarType.Float64);
        Assert.Equal(e.shape, a.shape);
        double err = (a - e).abs().max().item<double>();
        double bound = GradTol * e.abs().max().item<double>() + GradFloor;
        Assert.True(err <= bound, $"{what}: max abs error {err:G4} > {bound:G4}");
    }

    private static void AssertLoss(double expected, double actual, string what) =>
        Assert.True(Math.Abs(actual - expected) <= LossTol * Math.Abs(expected), $"{what}: {actual} vs {expected}");

    /// <summary>Per-example loss weights of the fixture's batch: instance rows 1, the class row the prior-loss weight.</summary>
    private static Tensor ExampleWeights(JsonElement json, int batch)
    {
        double prior = json.TryGetProperty("prior_loss_weight", out var p) ? p.GetDouble() : 1.0;
        return torch.tensor(Enumerable.Range(0, batch).Select(i => i == batch - 1 ? (float)prior : 1f).ToArray());
    }

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void Full_fine_tuning_step_gives_the_reference_loss_and_the_gradient_of_every_unet_parameter(bool checkpointing)
    {
        using var json = Fixtures.Json("train_full");
        var root = json.RootElement;
        using var g = Fixtures.Open("train_full");
        using var unet = UNetGoldenTests.LoadTinyUNet(Fixtures.Golden("tiny-sd15"));
        foreach (var p in unet.parameters()) p.requires_grad = true;
        unet.GradientCheckpointing = checkpointing;
        unet.train();

        using var scope = torch.NewDisposeScope();
        var latents = g.Load("latents");
        int batch = (int)latents.shape[0];
        using var result = DiffusionLoss.Compute(unet, NoiseSchedule.StableDiffusion1, latents, g.Load("noise"), g.Load("timesteps"),
            g.Load("encoder_hidden_states"), ExampleWeights(root, batch), new DiffusionLossOptions());

        AssertLoss(root.GetProperty("values").GetProperty("loss").GetDouble(), batch * result.Loss.item<float>(), "loss");
        AssertLoss(root.GetProperty("values").GetProperty("kohya_convention_loss").GetDouble(), result.Loss.item<float>(), "kohya loss");
        Fixtures.AssertClose(g.Load("mse_per_example"), result.PerExample, LossTol, "per-example loss");

        result.Loss.backward();
        int compared = 0;
        foreach (var (name, p) in unet.named_parameters())
        {
            var grad = p.grad ?? throw new Xunit.Sdk.XunitException($"{name}: no gradient");
            AssertGradient(g.Load("grad." + name), grad * batch, $"grad {name}");
            compared++;
        }
        Assert.Equal(root.GetProperty("parameter_count").GetInt32(), compared);
    }

    [SkippableFact]
    public void Textual_inversion_step_gives_the_reference_conditioning_loss_and_new_row_gradient()
    {
        using var json = Fixtures.Json("train_ti");
        var root = json.RootElement;
        using var g = Fixtures.Open("train_ti");
        using var te = Fixtures.LoadTinyPart(Fixtures.Golden("tiny-sd15"), "text_encoder", "model.safetensors", j => new ClipTextModel(ClipTextConfig.FromDiffusersJson(j)));
        using var unet = UNetGoldenTests.LoadTinyUNet(Fixtures.Golden("tiny-sd15"));
        foreach (var p in te.parameters().Concat(unet.parameters())) p.requires_grad = false;

        // The words added for the new rows get exactly the fixture's ids, and the prompt tokenizes to its input ids.
        int vectors = root.GetProperty("num_vectors").GetInt32();
        var words = Enumerable.Range(0, vectors).Select(i => i == 0 ? "sks" : $"sks{i}").ToList();
        var tokenizer = ClipTokenizer.FromDiffusersFolder(Fixtures.Golden("tiny-sd15/tokenizer")).WithAddedTokens(words);
        Assert.Equal(root.GetProperty("new_token_ids").EnumerateArray().Select(e => e.GetInt32()), words.Select(w => tokenizer.AddedTokens[w]));
        Assert.Equal([root.GetProperty("init_word_id").GetInt32()], tokenizer.Encode(root.GetProperty("init_word").GetString()!));
        var ids = g.Load("input_ids");
        string instance = root.GetProperty("instance_prompt").GetString()!.Replace("<new0 new1>", string.Join(" ", words));
        Assert.Equal(ids[0].data<long>().ToArray(), tokenizer.EncodeForModel(instance));
        Assert.Equal(ids[1].data<long>().ToArray(), tokenizer.EncodeForModel(root.GetProperty("class_prompt").GetString()!));

        using var rows = g.Load("new_embeddings").requires_grad_(true);
        te.text_model.embeddings.AddedTokens = rows;
        using var scope = torch.NewDisposeScope();
        var context = te.Encode(ids);
        Fixtures.AssertClose(g.Load("encoder_hidden_states"), context, OutputTol, "encoder hidden states on the extended table");

        var latents = g.Load("latents");
        int batch = (int)latents.shape[0];
        using var result = DiffusionLoss.Compute(unet, NoiseSchedule.StableDiffusion1, latents, g.Load("noise"), g.Load("timesteps"),
            context, ExampleWeights(root, batch), new DiffusionLossOptions());
        AssertLoss(root.GetProperty("values").GetProperty("loss").GetDouble(), batch * result.Loss.item<float>(), "loss");
        Fixtures.AssertClose(g.Load("mse_per_example"), result.PerExample, LossTol, "per-example loss");

        result.Loss.backward();
        AssertGradient(g.Load("grad.new_embeddings"), rows.grad! * batch, "grad of the new rows");
        Assert.True(te.parameters().All(p => p.grad is null), "only the new rows get a gradient");
    }
}
