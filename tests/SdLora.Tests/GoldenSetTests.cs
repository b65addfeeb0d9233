using System.Reflection;
using SdLora.IO;
using SdLora.Tests.Models;
using TorchSharp;
using Xunit;
using XunitException = Xunit.Sdk.XunitException;
using static TorchSharp.torch;

namespace SdLora.Tests;

/// <summary>
/// The golden tests pointed at another reference set (what <c>SDLORA_GOLDEN_DIR</c> does), checked with sets made
/// here from the copied one: a fixture removed, a tensor perturbed, a tolerance stated in the fixture's JSON.
/// </summary>
public class GoldenSetTests
{
    /// <summary>
    /// A set in <paramref name="dir"/> holding the tiny model (linked) and the VAE fixture; <paramref name="vaeTensors"/>
    /// may change the fixture's tensors, <paramref name="vaeJson"/> its JSON text.
    /// </summary>
    private static void MakeVaeSet(string dir, Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>>? vaeTensors = null,
        Func<string, string>? vaeJson = null, bool withoutVaeTensors = false)
    {
        Directory.CreateSymbolicLink(Path.Combine(dir, "tiny-sd15"), Fixtures.CopiedSet("tiny-sd15"));
        var json = File.ReadAllText(Fixtures.CopiedSet("vae.json"));
        File.WriteAllText(Path.Combine(dir, "vae.json"), vaeJson?.Invoke(json) ?? json);
        if (withoutVaeTensors) return;
        using var scope = torch.NewDisposeScope();
        using var source = SafetensorsFile.Open(Fixtures.CopiedSet("vae.safetensors"));
        var tensors = source.LoadAll();
        Safetensors.Save(Path.Combine(dir, "vae.safetensors"), vaeTensors?.Invoke(tensors) ?? tensors);
    }

    /// <summary>Adds <paramref name="amount"/> x max(1, max|t|) to one element of <paramref name="name"/>.</summary>
    private static Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>> Perturb(string name, double amount) => tensors =>
    {
        var t = tensors[name].clone();
        double scale = Math.Max(1.0, t.abs().max().item<float>());
        var flat = t.view(-1);
        flat[7] = flat[7] + amount * scale;
        tensors[name] = t;
        return tensors;
    };

    [Fact]
    public void A_fixture_absent_from_the_chosen_set_skips_the_tests_that_need_it_and_no_others()
    {
        using var set = Fixtures.TempDir();
        MakeVaeSet(set.Path, withoutVaeTensors: true);
        using (Fixtures.UseGoldenDir(set.Path))
        {
            var tests = new VaeGoldenTests();
            var skip = Assert.Throws<SkipException>(tests.Vae_decoder_matches_reference_image);
            Assert.Equal($"vae.safetensors not in {Path.GetFullPath(set.Path)}", skip.Message);
            Assert.Throws<SkipException>(tests.Vae_encoder_matches_reference_posterior);
            tests.Vae_parameter_names_equal_the_diffusers_checkpoint_keys(); // needs only the model and vae.json: runs
            Assert.Equal($"unet.safetensors not in {Path.GetFullPath(set.Path)}",
                Assert.Throws<SkipException>(new UNetGoldenTests().UNet_matches_reference_noise_predictions_and_activations).Message);
        }
    }

    [Fact]
    public void A_tensor_perturbed_beyond_its_tolerance_fails_naming_the_tensor_and_the_error()
    {
        using var set = Fixtures.TempDir();
        // The README's VAE tolerance is 1e-4 x max(1, max|expected|); move one value of "decoded" by 100 times that.
        MakeVaeSet(set.Path, Perturb("decoded", 1e-2));
        using (Fixtures.UseGoldenDir(set.Path))
        {
            var tests = new VaeGoldenTests();
            var failure = Assert.ThrowsAny<XunitException>(tests.Vae_decoder_matches_reference_image);
            Assert.StartsWith("decoded: max abs error ", failure.Message);
            Assert.Contains("> 0.0001 x max(1, ", failure.Message);
            tests.Vae_encoder_matches_reference_posterior(); // the fixture's other tensors still agree
        }
    }

    [Fact]
    public void A_tolerance_stated_in_the_fixture_json_replaces_the_readme_default()
    {
        using var set = Fixtures.TempDir();
        MakeVaeSet(set.Path, Perturb("decoded", 1e-2),
            json =>
            {
                var node = System.Text.Json.Nodes.JsonNode.Parse(json)!;
                node["tolerances"] = System.Text.Json.Nodes.JsonNode.Parse("""{"decoded": 0.05, "debug.*": {"relative": 0.001, "absolute": 0}}""");
                return node.ToJsonString();
            });
        using (Fixtures.UseGoldenDir(set.Path))
        {
            Assert.Equal(Tolerance.Golden(0.05), Fixtures.GoldenTolerance("vae", "decoded", 1e-4));
            Assert.Equal(Tolerance.RelativeToMax(1e-3), Fixtures.GoldenTolerance("vae", "debug.post_quant_conv", 1e-4));
            Assert.Equal(Tolerance.Golden(1e-4), Fixtures.GoldenTolerance("vae", "posterior_mean", 1e-4));
            new VaeGoldenTests().Vae_decoder_matches_reference_image(); // 1e-2 is within the stated 0.05
        }
    }

    [Fact]
    public void Without_a_chosen_set_the_golden_tests_read_the_copied_one()
    {
        var fromEnvironment = Environment.GetEnvironmentVariable(Fixtures.GoldenDirVariable);
        var expected = string.IsNullOrWhiteSpace(fromEnvironment) ? Fixtures.CopiedSet("") : fromEnvironment;
        Assert.Equal(Path.GetFullPath(expected).TrimEnd('/'), Fixtures.GoldenDir.TrimEnd('/'));
        Assert.Equal(!string.IsNullOrWhiteSpace(fromEnvironment), Fixtures.GoldenDirIsChosen);
    }

    [Fact]
    public void Every_golden_test_can_report_skipped()
    {
        var golden = typeof(GoldenSetTests).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods().Select(m => (Type: t, Method: m)))
            .Where(x => x.Method.GetCustomAttributes<FactAttribute>().Any() && IsGoldenTrait(x.Type, x.Method))
            .ToList();
        Assert.NotEmpty(golden);
        foreach (var (type, method) in golden)
        {
            var fact = method.GetCustomAttribute<FactAttribute>()!;
            Assert.True(fact is SkippableFactAttribute or SkippableTheoryAttribute, $"{type.Name}.{method.Name} is golden but not [SkippableFact]/[SkippableTheory]");
        }
    }

    private static bool IsGoldenTrait(Type type, MethodInfo method) =>
        type.GetCustomAttributesData().Concat(method.GetCustomAttributesData())
            .Where(a => a.AttributeType == typeof(TraitAttribute))
            .Any(a => (string?)a.ConstructorArguments[0].Value == "Category" && (string?)a.ConstructorArguments[1].Value == "Golden");
}
