using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json;
using Spectre.Console;
using TorchSharp;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>sdlora doctor</c>: what this machine is and what sdlora chose for it — CPU model and flags, torch version and
/// the kernel environment variables, the bf16-vs-fp32 probe (GFLOP/s per kernel) and what <c>--dtype auto</c>
/// and <c>--dtype bf16</c> become, with the probe cache's path.
/// </summary>
public static class DoctorCommand
{
    public static Command Create(CliContext cli)
    {
        var json = new Option<bool>("--json") { Description = "print the report as one JSON object" };
        var reprobe = new Option<bool>("--reprobe") { Description = "measure again instead of reading the cached probe (then cache the new result)" };
        var cmd = new Command("doctor", "show the CPU's features, the measured bf16/fp32 kernel speeds and the precision --dtype auto picks here") { json, reprobe };
        cmd.SetAction(parse =>
        {
            BenchHost.Start();
            var cpu = CpuFeatures.Detect();
            var (probe, fromCache, key) = CliCompute.Probe(cli.Cancellation, parse.GetValue(reprobe));
            var auto = ComputeOptions.ForCpu(probe);
            var bf16 = ComputeOptions.Resolve("cpu", "bf16", () => probe);
            var env = CpuKernelProbeCache.KernelEnvironmentVariables.ToDictionary(v => v, Environment.GetEnvironmentVariable);
            if (parse.GetValue(json))
            {
                parse.InvocationConfiguration.Output.WriteLine(JsonSerializer.Serialize(new
                {
                    cpu = new { model = cpu.Model, flags = cpu.Flags, logical_cores = cpu.LogicalCores, bf16_hardware = cpu.HasBf16Hardware },
                    os = RuntimeInformation.OSDescription,
                    dotnet = RuntimeInformation.FrameworkDescription,
                    torch = torch.__version__,
                    threads = torch.get_num_threads(),
                    environment = env,
                    probe = new
                    {
                        fp32_gflops = probe.Fp32GFlopsPerSecond, bf16_gflops = probe.Bf16GFlopsPerSecond, bf16_speedup = probe.Bf16Speedup,
                        kernels = probe.Kernels.Select(k => new { kernel = k.Kernel, dtype = k.DType, gflop = k.GFlop, seconds = k.Seconds, cpu_seconds = k.CpuSeconds, gflops = k.GFlopsPerSecond }),
                        threads = probe.Threads, seconds = probe.Seconds, note = probe.Note, cached = fromCache, key = key.Id,
                    },
                    cache = CpuKernelProbeCache.DefaultPath,
                    dtype_auto = ComputeOptions.DTypeName(auto.DType),
                    dtype_auto_kernels = auto.DType == torch.ScalarType.Float32 ? "fp32" : auto.CpuLowPrecision.ToString().ToLowerInvariant(),
                    dtype_bf16_kernels = bf16.CpuLowPrecision.ToString().ToLowerInvariant(),
                }, new JsonSerializerOptions { WriteIndented = true }));
                return 0;
            }
            var t = new Table().Border(TableBorder.Rounded).AddColumn("").AddColumn("");
            t.HideHeaders();
            t.AddRow("CPU", Markup.Escape($"{cpu.Model}, {cpu.LogicalCores} logical cores"));
            t.AddRow("CPU flags", Markup.Escape(cpu.Flags.Count > 0 ? string.Join(" ", cpu.Flags) : "none of the relevant ones"));
            t.AddRow("bf16 hardware", cpu.HasBf16Hardware ? "yes (AVX512-BF16/AMX/Arm BF16)" : "no (bf16 is emulated: slow)");
            t.AddRow("OS, .NET", Markup.Escape($"{RuntimeInformation.OSDescription}, {RuntimeInformation.FrameworkDescription}"));
            t.AddRow("torch", Markup.Escape($"libtorch {torch.__version__}, {torch.get_num_threads()} threads"));
            foreach (var (name, value) in env.Where(e => !string.IsNullOrEmpty(e.Value)))
                t.AddRow(Markup.Escape(name), Markup.Escape(value!));
            foreach (var k in probe.Kernels)
                t.AddRow(Markup.Escape($"probe {k.Round}: {k.Kernel} {k.DType}"), $"{k.GFlopsPerSecond:F1} GFLOP/s ({k.Seconds * 1000:F2} ms; CPU time {k.CpuSeconds * 1000:F2} ms)");
            t.AddRow("probe fp32 / bf16", $"{probe.Fp32GFlopsPerSecond:F1} / {probe.Bf16GFlopsPerSecond:F1} GFLOP/s (best wall time); bf16 at {probe.Bf16Speedup:F2}x fp32 (CPU time)");
            if (probe.Note is { } note) t.AddRow("probe note", Markup.Escape(note));
            t.AddRow("probe", Markup.Escape($"{probe.Seconds:F2} s with {probe.Threads} {(fromCache ? "read from the cache" : "measured now")}"));
            t.AddRow("cache", Markup.Escape($"{CpuKernelProbeCache.DefaultPath} (key {key.Id})"));
            t.AddRow("--dtype auto", Markup.Escape(auto.Describe()));
            t.AddRow("--dtype bf16", Markup.Escape(bf16.Describe()));
            cli.Console.Write(t);
            return 0;
        });
        return cmd;
    }
}
