using System.CommandLine;

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
        return bench;
    }
}
