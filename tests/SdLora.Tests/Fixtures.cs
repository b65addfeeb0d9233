using System.Text.Json;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests;

/// <summary>
/// The one way tests reach their data: the golden fixtures copied from the reference Python
/// implementations into tests/SdLora.Tests/data/golden (see its README for tolerances).
/// </summary>
public static class Fixtures
{
    private static readonly Lazy<string> _dataDir = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "SdLora.Tests", "data");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException("tests/SdLora.Tests/data not found above " + AppContext.BaseDirectory);
    });

    /// <summary>tests/SdLora.Tests/data</summary>
    public static string DataDir => _dataDir.Value;
    public static string GoldenDir => Path.Combine(DataDir, "golden");
    public static string RepoRoot => Path.GetFullPath(Path.Combine(DataDir, "..", "..", ".."));

    /// <summary>Path of a file under the golden folder, e.g. <c>Golden("tiny-sd15/unet/config.json")</c>.</summary>
    public static string Golden(string relative) => Path.Combine(GoldenDir, relative);

    /// <summary>Opens <c>golden/NAME.safetensors</c>.</summary>
    public static SafetensorsFile Open(string name) => SafetensorsFile.Open(Golden(name + ".safetensors"));

    /// <summary>Parses <c>golden/NAME.json</c>.</summary>
    public static JsonDocument Json(string name) => JsonDocument.Parse(File.ReadAllText(Golden(name + ".json")));

    /// <summary>A part of the tiny reference model (<c>tiny-sd15/PART</c>) built from its diffusers config.json and weights, in eval mode.</summary>
    public static T LoadTinyPart<T>(string part, string weightsFile, Func<string, T> createFromConfigJson) where T : nn.Module
    {
        var dir = Golden("tiny-sd15/" + part);
        var module = createFromConfigJson(File.ReadAllText(Path.Combine(dir, "config.json")));
        using var weights = SafetensorsFile.Open(Path.Combine(dir, weightsFile));
        SdLora.Models.ModuleWeights.Load(module, weights);
        module.eval();
        return module;
    }

    /// <summary>A fresh temporary folder, removed when disposed.</summary>
    public static TempDir TempDir() => new();

    /// <summary>The golden README's rule: <c>max|actual - expected| &lt;= tol * max(1, max|expected|)</c>.</summary>
    public static void AssertClose(Tensor expected, Tensor actual, double tol, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var scope = torch.NewDisposeScope();
        var e = expected.to(ScalarType.Float64).cpu();
        var a = actual.to(ScalarType.Float64).cpu();
        double scale = Math.Max(1.0, e.abs().max().item<double>());
        double err = (a - e).abs().max().item<double>();
        Assert.False(double.IsNaN(err), $"{what}: NaN in result");
        Assert.True(err <= tol * scale, $"{what}: max abs error {err:G4} > {tol:G2} x {scale:G4}");
    }
}

public sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sdlora-test-" + Guid.NewGuid().ToString("N")[..10]);
    public TempDir() => Directory.CreateDirectory(Path);
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}
