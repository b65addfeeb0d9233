using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Text;

/// <summary>The copied set's tiny text encoder, built once per test class and outside any test's dispose scope (which would free its weights).</summary>
public sealed class TinyClipText
{
    public ClipTextModel Model { get; } = ClipTextModelTests.LoadTiny(Fixtures.CopiedTinyModel);
}

[Trait("Category", "Golden")]
public class ClipTextModelTests
{
    internal static ClipTextModel LoadTiny(string modelDir) =>
        Fixtures.LoadTinyPart(modelDir, "text_encoder", "model.safetensors", json => new ClipTextModel(ClipTextConfig.FromDiffusersJson(json)));

    private static ClipTextModel LoadGolden() => LoadTiny(Fixtures.Golden("tiny-sd15"));

    private static Tolerance Tol(string tensor) => Fixtures.GoldenTolerance("text_encoder", tensor, 1e-4);

    [SkippableFact]
    public void Parameter_names_are_exactly_the_transformers_keys()
    {
        using var model = LoadGolden();
        using var weights = SafetensorsFile.Open(Fixtures.Golden("tiny-sd15/text_encoder/model.safetensors"));
        var names = ModuleWeights.StateDict(model).Keys.OrderBy(k => k, StringComparer.Ordinal);
        Assert.Equal(weights.Keys.OrderBy(k => k, StringComparer.Ordinal), names);
        Assert.Contains("text_model.encoder.layers.0.self_attn.q_proj.weight", names);
    }

    [SkippableFact]
    public void Last_and_penultimate_hidden_states_match_transformers()
    {
        using var f = Fixtures.Open("text_encoder");
        using var model = LoadGolden();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ids = f.Load("input_ids");
        Fixtures.AssertClose(f.Load("last_hidden_state"), model.forward(ids), Tol("last_hidden_state"), "last_hidden_state");
        Fixtures.AssertClose(f.Load("last_hidden_state"), model.Encode(ids, clipSkip: 1), Tol("last_hidden_state"), "clip skip 1");
        Fixtures.AssertClose(f.Load("penultimate_hidden_state_normed"), model.Encode(ids, clipSkip: 2), Tol("penultimate_hidden_state_normed"), "clip skip 2");
    }

    [SkippableFact]
    public void All_hidden_states_and_pooler_output_match_transformers()
    {
        using var f = Fixtures.Open("text_encoder");
        using var model = LoadGolden();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var output = model.ForwardAll(f.Load("input_ids"));
        var expected = f.Load("hidden_states");
        Assert.Equal(expected.shape[0], output.HiddenStates.Count);
        for (int i = 0; i < output.HiddenStates.Count; i++)
            Fixtures.AssertClose(expected[i], output.HiddenStates[i], Tol("hidden_states"), $"hidden_states[{i}]");
        Fixtures.AssertClose(f.Load("last_hidden_state"), output.LastHiddenState, Tol("last_hidden_state"), "last_hidden_state");
        Fixtures.AssertClose(f.Load("pooler_output"), output.PoolerOutput, Tol("pooler_output"), "pooler_output");
    }

    [SkippableFact]
    public void Clip_skip_outside_the_layer_count_is_a_clear_error()
    {
        using var model = LoadGolden();
        using var ids = zeros(1, model.Config.MaxPositionEmbeddings, dtype: ScalarType.Int64);
        var ex = Assert.Throws<SdLoraException>(() => model.Encode(ids, clipSkip: model.NumLayers + 1));
        Assert.Contains($"1 to {model.NumLayers}", ex.Message);
    }

    [SkippableFact]
    public void Runs_in_bf16_close_to_fp32()
    {
        using var f = Fixtures.Open("text_encoder");
        using var model = LoadGolden();
        model.to(ScalarType.BFloat16);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ids = f.Load("input_ids");
        var bf16 = model.Encode(ids);
        Assert.Equal(ScalarType.BFloat16, bf16.dtype);
        Fixtures.AssertClose(f.Load("last_hidden_state"), bf16, Tolerance.Bf16VsFp32, "bf16 last_hidden_state");
        Fixtures.AssertClose(f.Load("penultimate_hidden_state_normed"), model.Encode(ids, 2), Tolerance.Bf16VsFp32, "bf16 clip skip 2");
    }
}
