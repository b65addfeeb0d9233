using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Text;

/// <summary>The tiny text encoder, built once per test class and outside any test's dispose scope (which would free its weights).</summary>
public sealed class TinyClipText
{
    public ClipTextModel Model { get; } = ClipTextModelTests.LoadTiny();
}

public class ClipTextModelTests(TinyClipText tiny) : IClassFixture<TinyClipText>
{
    internal static ClipTextModel LoadTiny() =>
        Fixtures.LoadTinyPart("text_encoder", "model.safetensors", json => new ClipTextModel(ClipTextConfig.FromDiffusersJson(json)));

    private ClipTextModel Tiny => tiny.Model;

    [Fact]
    public void Parameter_names_are_exactly_the_transformers_keys()
    {
        using var weights = SafetensorsFile.Open(Fixtures.Golden("tiny-sd15/text_encoder/model.safetensors"));
        var names = ModuleWeights.StateDict(Tiny).Keys.OrderBy(k => k, StringComparer.Ordinal);
        Assert.Equal(weights.Keys.OrderBy(k => k, StringComparer.Ordinal), names);
        Assert.Contains("text_model.encoder.layers.0.self_attn.q_proj.weight", names);
    }

    [Fact]
    public void Last_and_penultimate_hidden_states_match_transformers()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var f = Fixtures.Open("text_encoder");
        var ids = f.Load("input_ids");
        Fixtures.AssertClose(f.Load("last_hidden_state"), Tiny.forward(ids), 1e-4, "last_hidden_state");
        Fixtures.AssertClose(f.Load("last_hidden_state"), Tiny.Encode(ids, clipSkip: 1), 1e-4, "clip skip 1");
        Fixtures.AssertClose(f.Load("penultimate_hidden_state_normed"), Tiny.Encode(ids, clipSkip: 2), 1e-4, "clip skip 2");
    }

    [Fact]
    public void All_hidden_states_and_pooler_output_match_transformers()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var f = Fixtures.Open("text_encoder");
        using var output = Tiny.ForwardAll(f.Load("input_ids"));
        var expected = f.Load("hidden_states");
        Assert.Equal(expected.shape[0], output.HiddenStates.Count);
        for (int i = 0; i < output.HiddenStates.Count; i++)
            Fixtures.AssertClose(expected[i], output.HiddenStates[i], 1e-4, $"hidden_states[{i}]");
        Fixtures.AssertClose(f.Load("last_hidden_state"), output.LastHiddenState, 1e-4, "last_hidden_state");
        Fixtures.AssertClose(f.Load("pooler_output"), output.PoolerOutput, 1e-4, "pooler_output");
    }

    [Fact]
    public void Clip_skip_outside_the_layer_count_is_a_clear_error()
    {
        using var ids = zeros(1, 77, dtype: ScalarType.Int64);
        var ex = Assert.Throws<SdLoraException>(() => Tiny.Encode(ids, clipSkip: 4));
        Assert.Contains("1 to 3", ex.Message);
    }

    [Fact]
    public void Runs_in_bf16_close_to_fp32()
    {
        var model = LoadTiny();
        model.to(ScalarType.BFloat16);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var f = Fixtures.Open("text_encoder");
        var ids = f.Load("input_ids");
        var bf16 = model.Encode(ids);
        Assert.Equal(ScalarType.BFloat16, bf16.dtype);
        Fixtures.AssertClose(f.Load("last_hidden_state"), bf16, Tolerance.Bf16VsFp32, "bf16 last_hidden_state");
        Fixtures.AssertClose(f.Load("penultimate_hidden_state_normed"), model.Encode(ids, 2), Tolerance.Bf16VsFp32, "bf16 clip skip 2");
    }
}
