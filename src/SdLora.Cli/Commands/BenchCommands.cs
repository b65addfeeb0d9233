using System.CommandLine;

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
        return bench;
    }
}
