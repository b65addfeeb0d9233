using System.CommandLine;
using System.CommandLine.Help;
using TorchSharp;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora bench ...</c>: the speed and memory benchmarks whose numbers go into docs/PERFORMANCE.md.</summary>
public static class BenchCommands
{
    public static Command Create()
    {
        var bench = new Command("bench", "benchmarks: speed, efficiency and peak memory (numbers for docs/PERFORMANCE.md)");
        bench.Subcommands.Add(BenchUNetCommand.Create("unet"));
        bench.Subcommands.Add(BenchLoadCommand.Create("load"));
        bench.Subcommands.Add(BenchGenerateCommand.Create("generate"));
        bench.Subcommands.Add(BenchTrainCommand.Create("train"));
        bench.Subcommands.Add(BenchCaptionCommand.Create("caption"));
        bench.Subcommands.Add(BenchVaeCommand.Create("vae"));
        bench.Subcommands.Add(BenchWorkflowCommand.Create("workflow"));
        return bench;
    }
}

/// <summary>
/// What every bench command shares. A bench command is the host of its process: it, not the benchmark library,
/// sets torch's thread count (from <c>--threads</c>) and seeds torch's generator, so the random weights and inputs
/// repeat from run to run.
/// </summary>
public static class BenchHost
{
    public static Option<int?> ThreadsOption() => new("--threads") { Description = "torch intra-op threads (default: torch's choice)" };

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
    public static ComputeOptions Compute(string dtype, string cpuLowPrecision, Action<string>? note = null)
    {
        var compute = CliCompute.Resolve("cpu", dtype, note);
        return ComputeOptions.IsAuto(cpuLowPrecision) ? compute : compute with { CpuLowPrecision = ComputeOptions.ParseCpuLowPrecision(cpuLowPrecision) };
    }

    /// <summary>Sets the thread count asked for and seeds torch's generator.</summary>
    public static void Start(int? threads)
    {
        if (threads is int n)
        {
            if (n < 1) throw new SdLoraException($"--threads {n}: use 1 or more");
            torch.set_num_threads(n);
        }
        torch.manual_seed(0);
    }

    /// <summary>
    /// Gives <paramref name="command"/> its own help option, so its help lists exactly its own options whatever the
    /// root command's help action adds for a command of the same name (<c>bench train</c> is not <c>train</c>).
    /// </summary>
    public static Command WithOwnHelp(Command command)
    {
        command.Options.Add(new HelpOption());
        return command;
    }
}
