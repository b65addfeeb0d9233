using System.CommandLine;

namespace SdLora.Cli.Commands;

/// <summary>Every top-level command of the CLI. Each command lives in its own file and only parses and presents.</summary>
public static class CommandCatalog
{
    public static IEnumerable<Command> All(CliContext cli)
    {
        yield return ModelCommands.Create(cli);
        yield return LoraCommands.Create(cli);
        yield return TokenizeCommand.Create(cli);
        yield return GenerateCommand.Create(cli);
        yield return CaptionCommand.Create(cli);
        yield return TrainCommand.Create(cli);
        yield return DemoCommand.Create(cli);
        yield return ToyCommand.Create(cli);
        yield return ServeCommand.Create(cli);
        yield return WorkerCommand.Create(cli);
        yield return BenchCommands.Create(cli);
        yield return DoctorCommand.Create(cli);
    }
}
