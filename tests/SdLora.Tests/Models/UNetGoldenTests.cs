using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Models;

public class UNetGoldenTests
{
    internal static UNet2DConditionModel LoadTinyUNet() =>
        Fixtures.LoadTinyPart("unet", "diffusion_pytorch_model.safetensors", json => new UNet2DConditionModel(UNetConfig.FromDiffusersJson(json)));

    [Fact]
    public void UNet_parameter_names_equal_the_diffusers_checkpoint_keys()
    {
        using var unet = LoadTinyUNet();
        using var weights = SafetensorsFile.Open(Fixtures.Golden("tiny-sd15/unet/diffusion_pytorch_model.safetensors"));
        var names = unet.named_parameters().Select(p => p.name).Concat(unet.named_buffers().Select(b => b.name)).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        var keys = weights.Keys.OrderBy(n => n, StringComparer.Ordinal).ToArray();
        Assert.Equal(684, keys.Length);
        Assert.Equal(keys, names);
    }

    [Fact]
    public void UNet_matches_reference_noise_predictions_and_activations()
    {
        using var unet = LoadTinyUNet();
        using var g = Fixtures.Open("unet");
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var sample = g.Load("sample");
        var context = g.Load("encoder_hidden_states");

        var debug = new Dictionary<string, Tensor>();
        var predInt = unet.Forward(sample, g.Load("timesteps_int"), context, debug);
        Fixtures.AssertClose(g.Load("noise_pred_int"), predInt, 1e-4, "noise_pred_int");
        var expectedDebug = g.Keys.Where(n => n.StartsWith("debug.")).ToArray();
        Assert.Equal(13, expectedDebug.Length);
        foreach (var name in expectedDebug)
        {
            Assert.True(debug.ContainsKey(name), $"{name} not captured");
            Fixtures.AssertClose(g.Load(name), debug[name], 1e-4, name);
        }
        foreach (var t in debug.Values) t.Dispose();

        Fixtures.AssertClose(g.Load("noise_pred_float"), unet.forward(sample, g.Load("timesteps_float"), context), 1e-4, "noise_pred_float");
        Fixtures.AssertClose(g.Load("noise_pred_scalar"), unet.forward(sample, g.Load("timestep_scalar"), context), 1e-4, "noise_pred_scalar");
    }
}
