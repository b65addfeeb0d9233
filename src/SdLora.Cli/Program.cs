using System.CommandLine;
using SdLora;
using SdLora.Cli.Commands;

var root = new RootCommand("sdlora: personalize Stable Diffusion 1.x with LoRA and DreamBooth");
foreach (var command in CommandCatalog.All()) root.Subcommands.Add(command);
foreach (var help in root.Options.OfType<System.CommandLine.Help.HelpOption>())
    if (help.Action is { } standard) help.Action = new TrainHelpAction(standard);

// Ctrl-C: long jobs stop after their current step and keep what they made (see CliCancellation).
CliCancellation.Install();
try
{
    return await root.Parse(args).InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null });
}
catch (SdLoraException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return SdLoraException.ExitCode;
}
catch (OperationCanceledException)
{
    Console.Error.WriteLine("stopped.");
    return 130;
}
