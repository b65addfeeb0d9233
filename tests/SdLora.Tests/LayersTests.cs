using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests;

public class LayersTests
{
    private sealed class AddOne : ILayerAdapter { public Tensor Forward(Tensor input) => torch.ones_like(input.sum(-1, keepdim: true)); }

    [Fact]
    public void Adaptable_linear_registers_reference_names_and_adds_adapter_output()
    {
        using var lin = new AdaptableLinear(3, 2);
        Assert.Equal(new[] { "weight", "bias" }, lin.named_parameters().Select(p => p.name).ToArray());
        var x = torch.randn(4, 3);
        var baseOut = lin.forward(x);
        var adapter = new AddOne();
        lin.AddAdapter(adapter);
        Assert.True(torch.allclose(lin.forward(x), baseOut + 1));
        lin.RemoveAdapter(adapter);
        Assert.True(torch.allclose(lin.forward(x), baseOut));
    }

    [Fact]
    public void Module_weights_load_by_name_and_report_shape_mismatch()
    {
        using var conv = new AdaptableConv2d(2, 4, 3, padding: 1);
        var w = torch.randn(4, 2, 3, 3); var b = torch.randn(4);
        ModuleWeights.Load(conv, new DictionaryTensorSource(new Dictionary<string, Tensor> { ["weight"] = w, ["bias"] = b }));
        Assert.True(torch.equal(conv.weight, w).all().item<bool>());
        var bad = new DictionaryTensorSource(new Dictionary<string, Tensor> { ["weight"] = torch.randn(4, 2, 1, 1), ["bias"] = b }, "bad.safetensors");
        var ex = Assert.Throws<SdLoraException>(() => ModuleWeights.Load(conv, bad));
        Assert.Contains("bad.safetensors", ex.Message);
        Assert.Contains("'weight'", ex.Message);
    }
}
