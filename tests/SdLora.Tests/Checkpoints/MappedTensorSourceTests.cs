using SdLora.Checkpoints;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Checkpoints;

/// <summary>
/// The renamed and filtered views the checkpoint loaders read LDM files through: names in the order given (the first of
/// a repeated name wins), reshapes on load but not on a copy, the inner source's descriptions and refusals.
/// </summary>
public class MappedTensorSourceTests
{
    private static DictionaryTensorSource Inner() => new(new Dictionary<string, Tensor>
    {
        ["ldm.proj.weight"] = torch.arange(6, dtype: ScalarType.Float32).reshape(3, 2, 1, 1),
        ["ldm.bias"] = torch.tensor(new float[] { 7, 8 }),
        ["ldm.other"] = torch.zeros(3),
    }, "model.ckpt");

    private static MappedTensorSource Mapped(string? description = null) => new(Inner(),
    [
        ("proj.weight", "ldm.proj.weight", [3, 2]),
        ("proj.bias", "ldm.bias", null),
        ("proj.weight", "ldm.other", null), // a second entry of a name is ignored
    ], description);

    [Fact]
    public void Names_map_to_inner_tensors_in_the_order_given_and_reshape_on_load()
    {
        var source = Mapped();

        Assert.Equal(["proj.weight", "proj.bias"], source.Keys);
        Assert.True(source.Contains("proj.bias"));
        Assert.False(source.Contains("ldm.bias"));
        Assert.Equal("ldm.proj.weight", source.SourceKeyOf("proj.weight"));
        Assert.Equal([3L, 2], source.ShapeOf("proj.weight"));
        Assert.Equal([2L], source.ShapeOf("proj.bias")); // no reshape: the inner shape
        using var w = source.Load("proj.weight", ScalarType.Float64);
        Assert.Equal([3L, 2], w.shape);
        Assert.Equal(ScalarType.Float64, w.dtype);
        Assert.Equal([0.0, 1, 2, 3, 4, 5], w.flatten().data<double>().ToArray());
        using var b = source.Load("proj.bias");
        Assert.Equal([7f, 8f], b.data<float>().ToArray());

        // A copy goes straight into the target, whatever view it has.
        using var target = torch.zeros(2, 3);
        source.CopyInto("proj.weight", target);
        Assert.Equal([0f, 1, 2, 3, 4, 5], target.flatten().data<float>().ToArray());
    }

    [Fact]
    public void A_name_not_mapped_is_refused_naming_the_source()
    {
        Assert.Equal("model.ckpt", Mapped().Description);
        Assert.Equal("unet of model.ckpt", Mapped("unet of model.ckpt").Description);
        Assert.Equal("model.ckpt: has no tensor 'ldm.bias'", Assert.Throws<SdLoraException>(() => Mapped().Load("ldm.bias")).Message);
        Assert.Equal("model.ckpt: has no tensor 'x'", Assert.Throws<SdLoraException>(() => Mapped().ShapeOf("x")).Message);
        Assert.Equal("model.ckpt: has no tensor 'x'", Assert.Throws<SdLoraException>(() => Mapped().SourceKeyOf("x")).Message);
    }

    [Fact]
    public void A_filtered_source_hides_the_names_it_does_not_keep()
    {
        var inner = Inner();
        var source = new FilteredTensorSource(inner, name => name != "ldm.other");

        Assert.Equal(["ldm.bias", "ldm.proj.weight"], source.Keys.Order(StringComparer.Ordinal));
        Assert.False(source.Contains("ldm.other"));
        Assert.False(source.Contains("missing"));
        Assert.True(source.Contains("ldm.bias"));
        Assert.Equal("model.ckpt", source.Description);
        Assert.Same(inner, source.Inner);
        Assert.Equal([3L, 2, 1, 1], source.ShapeOf("ldm.proj.weight"));
        using var b = source.Load("ldm.bias", ScalarType.Float16);
        Assert.Equal(ScalarType.Float16, b.dtype);
    }
}
