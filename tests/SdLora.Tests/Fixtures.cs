using System.Text.Json;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests;

/// <summary>
/// The one way tests reach their data. Golden tests read the reference set in <see cref="GoldenDir"/>:
/// <c>SDLORA_GOLDEN_DIR</c> when set, else the set copied into tests/SdLora.Tests/data/golden (see its README for the
/// tolerances and for how to check another set). Other tests that use the tiny model or a fixture as plain test data
/// read the copied set (<see cref="CopiedSet"/>), whatever the variable says.
/// </summary>
public static class Fixtures
{
    public const string GoldenDirVariable = "SDLORA_GOLDEN_DIR";

    private static readonly Lazy<string> _dataDir = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "SdLora.Tests", "data");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException("tests/SdLora.Tests/data not found above " + AppContext.BaseDirectory);
    });

    private static readonly Lazy<string?> _goldenDirFromEnvironment = new(() =>
    {
        var value = Environment.GetEnvironmentVariable(GoldenDirVariable);
        if (string.IsNullOrWhiteSpace(value)) return null;
        var full = Path.GetFullPath(value);
        if (!Directory.Exists(full))
            throw new DirectoryNotFoundException($"{GoldenDirVariable}={value}: no such folder; point it at a golden reference set or unset it");
        return full;
    });

    private static readonly AsyncLocal<string?> _goldenDirOverride = new();

    /// <summary>tests/SdLora.Tests/data</summary>
    public static string DataDir => _dataDir.Value;
    public static string RepoRoot => Path.GetFullPath(Path.Combine(DataDir, "..", "..", ".."));

    /// <summary>The reference set golden tests read: <c>SDLORA_GOLDEN_DIR</c>, else the copied set.</summary>
    public static string GoldenDir => _goldenDirOverride.Value ?? _goldenDirFromEnvironment.Value ?? Path.Combine(DataDir, "golden");

    /// <summary>True when <see cref="GoldenDir"/> was named from outside: then a file absent from it skips the tests that need it.</summary>
    public static bool GoldenDirIsChosen => _goldenDirOverride.Value is not null || _goldenDirFromEnvironment.Value is not null;

    /// <summary>
    /// Points the golden tests run from the calling flow at <paramref name="dir"/> until disposed, as
    /// <c>SDLORA_GOLDEN_DIR</c> would (for tests of this machinery).
    /// </summary>
    public static IDisposable UseGoldenDir(string dir)
    {
        var previous = _goldenDirOverride.Value;
        _goldenDirOverride.Value = Path.GetFullPath(dir);
        return new Restore(() => _goldenDirOverride.Value = previous);
    }

    private sealed class Restore(Action restore) : IDisposable
    {
        public void Dispose() => restore();
    }

    /// <summary>
    /// Path of a file of the golden set copied into this repository, whatever <c>SDLORA_GOLDEN_DIR</c> says: for tests
    /// that use the tiny model or a fixture as test data, not as the reference they are checked against.
    /// </summary>
    public static string CopiedSet(string relative) => Path.Combine(DataDir, "golden", relative);

    /// <summary>The tiny model's diffusers folder of the copied set (test data for behaviour tests).</summary>
    public static string CopiedTinyModel => CopiedSet("tiny-sd15");

    /// <summary>
    /// Path of a file or folder of the golden set, e.g. <c>Golden("tiny-sd15/unet/config.json")</c>. When the set was
    /// chosen through <c>SDLORA_GOLDEN_DIR</c> and lacks it, the calling test is skipped ("FILE not in FOLDER"); golden
    /// tests are <c>[SkippableFact]</c>/<c>[SkippableTheory]</c> for that.
    /// </summary>
    public static string Golden(string relative)
    {
        var path = Path.Combine(GoldenDir, relative);
        if (GoldenDirIsChosen && !File.Exists(path) && !Directory.Exists(path))
            throw new SkipException($"{relative} not in {GoldenDir}");
        return path;
    }

    /// <summary>
    /// Loads something for a class fixture, which runs outside every test's dispose scope (so its tensors live as long
    /// as the fixture): a golden file the set lacks is remembered and skips each test that then asks for it.
    /// </summary>
    public static Func<T> LoadOrRememberSkip<T>(Func<T> load)
    {
        try
        {
            var value = load();
            return () => value;
        }
        catch (SkipException skip)
        {
            return () => throw new SkipException(skip.Message);
        }
    }

    /// <summary>Opens <c>NAME.safetensors</c> of the golden set.</summary>
    public static SafetensorsFile Open(string name) => SafetensorsFile.Open(Golden(name + ".safetensors"));

    /// <summary>Parses <c>NAME.json</c> of the golden set.</summary>
    public static JsonDocument Json(string name) => JsonDocument.Parse(ReadJsonText(Golden(name + ".json")));

    // Python's json writes bare -Infinity/Infinity/NaN values, which System.Text.Json rejects: read them as null.
    private static string ReadJsonText(string path) =>
        System.Text.RegularExpressions.Regex.Replace(File.ReadAllText(path), @"(?<=[\[:,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])", "null");

    /// <summary>
    /// The tolerance for <paramref name="tensor"/> of fixture <paramref name="name"/>: the fixture JSON's
    /// <c>"tolerances"</c> entry for that tensor (exact name, else the longest matching <c>"prefix*"</c>) when it has one,
    /// else <paramref name="readmeDefault"/>, the golden README's value. An entry is a number (the README rule
    /// <c>tol * max(1, max|expected|)</c>) or <c>{"relative": r, "absolute": a}</c>.
    /// </summary>
    public static Tolerance GoldenTolerance(string name, string tensor, Tolerance readmeDefault)
    {
        using var json = Json(name);
        if (!json.RootElement.TryGetProperty("tolerances", out var table)) return readmeDefault;
        JsonElement? entry = null;
        int matched = -1;
        foreach (var p in table.EnumerateObject())
        {
            bool exact = p.Name == tensor;
            bool prefix = p.Name.EndsWith('*') && tensor.StartsWith(p.Name[..^1], StringComparison.Ordinal);
            int strength = exact ? int.MaxValue : prefix ? p.Name.Length : -1;
            if (strength > matched) { matched = strength; entry = p.Value; }
        }
        if (entry is not { } e) return readmeDefault;
        return e.ValueKind == JsonValueKind.Number
            ? Tolerance.Golden(e.GetDouble())
            : new Tolerance(e.GetProperty("relative").GetDouble(), e.GetProperty("absolute").GetDouble());
    }

    /// <inheritdoc cref="GoldenTolerance(string, string, Tolerance)"/>
    public static Tolerance GoldenTolerance(string name, string tensor, double readmeDefault) =>
        GoldenTolerance(name, tensor, Tolerance.Golden(readmeDefault));

    /// <summary>A part of a tiny model folder (<c>MODELDIR/PART</c>) built from its diffusers config.json and weights, in eval mode.</summary>
    public static T LoadTinyPart<T>(string modelDir, string part, string weightsFile, Func<string, T> createFromConfigJson) where T : nn.Module
    {
        var dir = Path.Combine(modelDir, part);
        var module = createFromConfigJson(File.ReadAllText(Path.Combine(dir, "config.json")));
        using var weights = SafetensorsFile.Open(Path.Combine(dir, weightsFile));
        SdLora.Models.ModuleWeights.Load(module, weights);
        module.eval();
        return module;
    }

    /// <summary>A fresh temporary folder, removed when disposed.</summary>
    public static TempDir TempDir() => new();

    /// <summary>The golden README's rule: <c>max|actual - expected| &lt;= tol * max(1, max|expected|)</c>.</summary>
    public static void AssertClose(Tensor expected, Tensor actual, double tol, string what) =>
        AssertClose(expected, actual, Tolerance.Golden(tol), what);

    /// <summary><c>max|actual - expected| &lt;= max(tol.Absolute, tol.Relative * max|expected|)</c> over the whole tensor.</summary>
    public static void AssertClose(Tensor expected, Tensor actual, Tolerance tol, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var scope = torch.NewDisposeScope();
        var e = expected.to(ScalarType.Float64).cpu();
        var a = actual.to(ScalarType.Float64).cpu();
        double scale = e.numel() == 0 ? 0 : e.abs().max().item<double>();
        double err = e.numel() == 0 ? 0 : (a - e).abs().max().item<double>();
        double allowed = tol.Allowed(scale);
        ToleranceLog.Record(what, err, allowed);
        Assert.False(double.IsNaN(err), $"{what}: NaN in result");
        Assert.True(err <= allowed, $"{what}: max abs error {err:G4} > {tol.Describe(scale)}");
    }

    /// <summary>The same rule for one number.</summary>
    public static void AssertClose(double expected, double actual, Tolerance tol, string what)
    {
        double err = Math.Abs(actual - expected), allowed = tol.Allowed(Math.Abs(expected));
        ToleranceLog.Record(what, err, allowed);
        Assert.False(double.IsNaN(actual), $"{what}: NaN");
        Assert.True(err <= allowed, $"{what}: {actual:G9} vs {expected:G9}, error {err:G4} > {tol.Describe(Math.Abs(expected))}");
    }
}

/// <summary>
/// How far a computed tensor may be from its expected value: <c>max(Absolute, Relative * max|expected|)</c>.
/// Relative covers rounding that grows with the values; Absolute is the floor for tensors near zero. Kernels for
/// different CPUs (AVX2, AVX-512) and thread counts sum in different orders, so no comparison of floating-point
/// results may be exact unless both sides ran the very same operations on the same values.
/// </summary>
public readonly record struct Tolerance(double Relative, double Absolute)
{
    /// <summary>The golden README's <c>tol * max(1, max|expected|)</c>: absolute below 1, relative above.</summary>
    public static Tolerance Golden(double tol) => new(tol, tol);

    /// <summary>Relative to the tensor's own largest value, with an absolute floor (default none).</summary>
    public static Tolerance RelativeToMax(double relative, double absolute = 0) => new(relative, absolute);

    /// <summary>Bit-identical: for results of the same operations on the same values.</summary>
    public static Tolerance Exact => new(0, 0);

    /// <summary>
    /// Two fp32 evaluations of the same gradient through different kernels (the golden README's rule for LoRA
    /// gradients: 1e-4 relative to the tensor's largest value), with a floor of 1e-6 x the largest gradient of the
    /// whole network: rounding comes from activations every layer shares, so a tensor whose own gradient is nearly
    /// zero may not be held to its own tiny scale.
    /// </summary>
    public static Tolerance Gradient(double largestInNetwork) => RelativeToMax(1e-4, 1e-6 * largestInNetwork);

    /// <summary>
    /// A bf16 model against fp32: bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.0039) and every layer rounds
    /// its output, so the tiny models' few dozen layers in a chain leave about 2 % of the output's scale (measured
    /// 1.4-2.5 % with AVX2 and AVX-512 kernels, 1 and 2 threads, upcast and native policies). 0.1 x max(1, max|expected|)
    /// leaves room for other CPUs' kernels; a wrong computation (a layer skipped, a bad cast) is off by far more.
    /// </summary>
    public static Tolerance Bf16VsFp32 => Golden(1e-1);

    public double Allowed(double scale) => Math.Max(Absolute, Relative * scale);

    public string Describe(double scale) => Relative == Absolute
        ? $"{Relative:G2} x max(1, {scale:G4})"
        : $"max({Absolute:G2}, {Relative:G2} x {scale:G4})";
}

/// <summary>
/// When <c>SDLORA_TOLERANCE_LOG</c> names a file, every tolerance check appends one line to it:
/// <c>what, error, allowed, error/allowed</c> (tab separated). Runs on different CPUs and thread counts then show how
/// much room each tolerance leaves (see tests/SdLora.Tests/data/golden/README.md).
/// </summary>
public static class ToleranceLog
{
    private static readonly string? Path = Environment.GetEnvironmentVariable("SDLORA_TOLERANCE_LOG");
    private static readonly Lock Gate = new();

    public static void Record(string what, double error, double allowed)
    {
        if (string.IsNullOrEmpty(Path)) return;
        double ratio = allowed > 0 ? error / allowed : error > 0 ? double.PositiveInfinity : 0;
        lock (Gate) File.AppendAllText(Path, FormattableString.Invariant($"{what.Replace('\t', ' ')}\t{error:G4}\t{allowed:G4}\t{ratio:F4}\n"));
    }
}

public sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sdlora-test-" + Guid.NewGuid().ToString("N")[..10]);
    public TempDir() => Directory.CreateDirectory(Path);
    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Writes <paramref name="tensors"/> as the safetensors file <paramref name="name"/> here; returns its path.</summary>
    public string SaveSafetensors(string name, Dictionary<string, TorchSharp.torch.Tensor> tensors, Dictionary<string, string>? metadata = null)
    {
        var path = File(name);
        SdLora.IO.Safetensors.Save(path, tensors, metadata);
        return path;
    }

    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}
