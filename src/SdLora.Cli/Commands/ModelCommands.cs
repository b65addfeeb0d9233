using System.CommandLine;

namespace SdLora.Cli.Commands;

public static class ModelCommands
{
    public static Command Create()
    {
        var model = new Command("model", "inspect Stable Diffusion checkpoints");
        return model;
    }
}
