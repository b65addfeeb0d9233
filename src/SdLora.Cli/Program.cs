using System.CommandLine;
using SdLora;
using SdLora.Cli.Commands;

var root = new RootCommand("sdlora: personalize Stable Diffusion 1.x with LoRA and DreamBooth");
foreach (var command in CommandCatalog.All()) root.Subcommands.Add(command);

try
{
    return await root.Parse(args).InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
}
catch (SdLoraException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return SdLoraException.ExitCode;
}
