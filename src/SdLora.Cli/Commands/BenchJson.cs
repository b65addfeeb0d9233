using System.CommandLine;
using System.Text.Json;
using SdLora.Benchmarks;
using Spectre.Console;
using TorchSharp;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>--json</c> for every bench command: one JSON object on standard output (progress moves to standard error) with
/// what ran, the dtype chosen, the time per step or image, the work in GFLOP, the same-process matmul ceiling for that
/// dtype, the efficiency, the peak RSS in bytes and the machine (CPU model and flags, torch version, threads, load).
/// </summary>
public static class BenchJson
{
    public static Option<bool> Option() => new("--json")
    {
        Description = "print one JSON object (what ran, dtype, seconds, GFLOP, same-process ceiling, efficiency, peak RSS, CPU flags) instead of a table; progress goes to stderr",
    };

    /// <summary>Progress lines: grey on the console, or plain on standard error when the output is JSON.</summary>
    public static IProgress<string> Progress(CliContext cli, bool json) => json
        ? new SyncProgress<string>(m => cli.Error.WriteLine(m))
        : new SyncProgress<string>(m => cli.Console.MarkupLineInterpolated($"[grey]{m}[/]"));

    /// <summary>Notes (what --dtype auto chose) go to standard error either way, as every command's notes do.</summary>
    public static Action<string> Note(CliContext cli, bool json) => cli.Note;

    /// <summary>The machine fields every report carries.</summary>
    public static Dictionary<string, object?> Machine()
    {
        var cpu = CpuFeatures.Detect();
        return new()
        {
            ["cpu"] = new Dictionary<string, object?> { ["model"] = cpu.Model, ["flags"] = cpu.Flags, ["logical_cores"] = cpu.LogicalCores, ["bf16_hardware"] = cpu.HasBf16Hardware },
            ["torch"] = torch.__version__,
            ["threads"] = torch.get_num_threads(),
            ["load_average"] = LoadAverage(),
            ["environment"] = CpuKernelProbeCache.KernelEnvironmentVariables
                .Select(v => (v, Environment.GetEnvironmentVariable(v))).Where(e => !string.IsNullOrEmpty(e.Item2)).ToDictionary(e => e.v, e => e.Item2),
            ["finished_at"] = DateTimeOffset.UtcNow.ToString("O"),
        };
    }

    /// <summary>The dtype fields of a report.</summary>
    public static Dictionary<string, object?> Precision(ComputeOptions compute, string requested) => new()
    {
        ["dtype"] = ComputeOptions.DTypeName(compute.DType),
        ["cpu_low_precision"] = compute.DType == torch.ScalarType.Float32 ? null : compute.CpuLowPrecision.ToString().ToLowerInvariant(),
        ["dtype_requested"] = requested,
    };

    /// <summary>The ceiling fields: every kernel measured, and the best of the report's dtype.</summary>
    public static Dictionary<string, object?> Ceiling(IEnumerable<MatmulThroughput> matmul, torch.ScalarType dtype)
    {
        var list = matmul.ToList();
        return new()
        {
            ["ceiling_gflops"] = list.Where(m => m.DType == dtype).Select(m => m.GFlopsPerSecond).DefaultIfEmpty(0).Max(),
            ["ceiling_kernels"] = list.Select(m => new Dictionary<string, object?>
            {
                ["kernel"] = m.Kernel, ["dtype"] = ComputeOptions.DTypeName(m.DType), ["size"] = m.Size, ["gflops"] = m.GFlopsPerSecond,
            }).ToList(),
        };
    }

    /// <summary>Writes <paramref name="fields"/> (and <see cref="Machine"/>) as one indented JSON object.</summary>
    public static void Write(ParseResult parse, params Dictionary<string, object?>[] fields)
    {
        var all = new Dictionary<string, object?>();
        foreach (var part in fields.Append(Machine()))
            foreach (var (k, v) in part) all[k] = v;
        parse.InvocationConfiguration.Output.WriteLine(JsonSerializer.Serialize(all, Options));
    }

    private static readonly JsonSerializerOptions Options = new() { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    private static double[]? LoadAverage()
    {
        try
        {
            if (!File.Exists("/proc/loadavg")) return null;
            return File.ReadAllText("/proc/loadavg").Split(' ').Take(3).Select(s => double.Parse(s, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        }
        catch (IOException) { return null; }
        catch (FormatException) { return null; }
    }
}
