using System.CommandLine;

namespace SdLora.Cli.Commands;

/// <summary>Every top-level command of the CLI. Each command lives in its own file and only parses and presents.</summary>
public static class CommandCatalog
{
    public static IEnumerable<Command> All()
    {
        yield return ModelCommands.Create();
        yield return LoraCommands.Create();
        yield return TokenizeCommand.Create();
        yield return GenerateCommand.Create();
        yield return CaptionCommand.Create();
        yield return TrainCommand.Create();
        yield return DemoCommand.Create();
        yield return ServeCommand.Create();
        yield return BenchCommands.Create();
    }
}
