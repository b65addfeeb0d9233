using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Models;

[Trait("Category", "Golden")]
public class UNetGoldenTests
{
    /// <summary>The UNet of the tiny model folder <paramref name="modelDir"/> (the golden set's or the copied one).</summary>
    internal static UNet2DConditionModel LoadTinyUNet(string modelDir) =>
        Fixtures.LoadTinyPart(modelDir, "unet", "diffusion_pytorch_model.safetensors", json => new UNet2DConditionModel(UNetConfig.FromDiffusersJson(json)));

    private static Tolerance Tol(string tensor) => Fixtures.GoldenTolerance("unet", tensor, 1e-4);

    [SkippableFact]
    public void UNet_parameter_names_equal_the_diffusers_checkpoint_keys()
    {
        using var unet = LoadTinyUNet(Fixtures.Golden("tiny-sd15"));
        using var weights = SafetensorsFile.Open(Fixtures.Golden("tiny-sd15/unet/diffusion_pytorch_model.safetensors"));
        var names = unet.named_parameters().Select(p => p.name).Concat(unet.named_buffers().Select(b => b.name)).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        var keys = weights.Keys.OrderBy(n => n, StringComparer.Ordinal).ToArray();
        Assert.NotEmpty(keys);
        Assert.Equal(keys, names);
    }

    [SkippableFact]
    public void UNet_matches_reference_noise_predictions_and_activations()
    {
        using var g = Fixtures.Open("unet");
        using var unet = LoadTinyUNet(Fixtures.Golden("tiny-sd15"));
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var sample = g.Load("sample");
        var context = g.Load("encoder_hidden_states");

        var debug = new Dictionary<string, Tensor>();
        var predInt = unet.Forward(sample, g.Load("timesteps_int"), context, debug);
        Fixtures.AssertClose(g.Load("noise_pred_int"), predInt, Tol("noise_pred_int"), "noise_pred_int");
        foreach (var name in g.Keys.Where(n => n.StartsWith("debug.")))
        {
            Assert.True(debug.ContainsKey(name), $"{name} not captured");
            Fixtures.AssertClose(g.Load(name), debug[name], Tol(name), name);
        }
        foreach (var t in debug.Values) t.Dispose();

        foreach (var (timesteps, output) in new[] { ("timesteps_float", "noise_pred_float"), ("timestep_scalar", "noise_pred_scalar") })
            Fixtures.AssertClose(g.Load(output), unet.forward(sample, g.Load(timesteps), context), Tol(output), output);
    }
}
