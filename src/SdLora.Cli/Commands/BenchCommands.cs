using System.CommandLine;
using System.CommandLine.Help;
using TorchSharp;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora bench ...</c>: the speed and memory benchmarks whose numbers go into docs/PERFORMANCE.md.</summary>
public static class BenchCommands
{
    public static Command Create(CliContext cli)
    {
        var bench = new Command("bench", "benchmarks: speed, efficiency and peak memory (numbers for docs/PERFORMANCE.md)");
        bench.Subcommands.Add(BenchUNetCommand.Create(cli, "unet"));
        bench.Subcommands.Add(BenchLoadCommand.Create(cli, "load"));
        bench.Subcommands.Add(BenchGenerateCommand.Create(cli, "generate"));
        bench.Subcommands.Add(BenchTrainCommand.Create(cli, "train"));
        bench.Subcommands.Add(BenchCaptionCommand.Create(cli, "caption"));
        bench.Subcommands.Add(BenchVaeCommand.Create(cli, "vae"));
        bench.Subcommands.Add(BenchWorkflowCommand.Create(cli, "workflow"));
        return bench;
    }
}

/// <summary>
/// What every bench command shares. A bench command is the host of its process: the CLI context sets torch's thread
/// count (the global <c>--threads</c>) and the command seeds torch's generator, so the random weights and inputs
/// repeat from run to run.
/// </summary>
public static class BenchHost
{
    public static Option<string> CpuLowPrecisionOption() => new("--cpu-low-precision")
    {
        Description = "how bf16/fp16 layers compute on the CPU: auto (the probe decides, as generate does), upcast (fp32 arithmetic) or native (bf16 arithmetic: fast on CPUs with AVX512-BF16/AMX)",
        DefaultValueFactory = _ => "auto",
    };

    public static Option<string> DTypeOption(string description = CliCompute.DTypeDescription) => new("--dtype") { Description = description, DefaultValueFactory = _ => "auto" };

    /// <summary>
    /// The benchmark's precision: <paramref name="dtype"/> resolved as generate resolves it (auto: the CPU probe), then
    /// <paramref name="cpuLowPrecision"/> (auto, upcast, native) overriding the kernel policy when not auto.
    /// </summary>
    public static ComputeOptions Compute(string dtype, string cpuLowPrecision, CliContext cli, Action<string>? note = null)
    {
        var compute = CliCompute.Resolve("cpu", dtype, cli, note);
        return ComputeOptions.IsAuto(cpuLowPrecision) ? compute : compute with { CpuLowPrecision = ComputeOptions.ParseCpuLowPrecision(cpuLowPrecision) };
    }

    /// <summary>Seeds torch's generator (threads are already set by the CLI context).</summary>
    public static void Start() => torch.manual_seed(0);
}
