using System.CommandLine;
using SdLora.Cli;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Cli;

/// <summary><c>--dtype auto</c> is the default of every command that computes with a model (issue 10).</summary>
public class DTypeAutoDefaultTests
{
    public static TheoryData<string[]> ComputingCommands() => new(
        ["generate"], ["caption"], ["serve"],
        ["bench", "unet"], ["bench", "generate"], ["bench", "vae"], ["bench", "load"], ["bench", "train"], ["bench", "caption"], ["bench", "workflow"]);

    [Theory]
    [MemberData(nameof(ComputingCommands))]
    public void The_dtype_option_defaults_to_auto(string[] path)
    {
        using var cli = CliContext.Plain(new StringWriter());
        var root = SdLoraCli.CreateRoot(cli);
        Command command = root;
        foreach (var name in path) command = command.Subcommands.Single(c => c.Name == name);
        var dtype = Assert.IsType<Option<string>>(command.Options.Single(o => o.Name == "--dtype"));
        Assert.Equal("auto", root.Parse(path).GetValue(dtype));
        Assert.Contains("auto", dtype.Description);
    }

    [Fact]
    public void Training_defaults_to_auto_and_its_option_offers_it()
    {
        Assert.Equal("auto", new TrainingConfig().Dtype);
        var setting = TrainingSettings.All.Single(s => s.Name == "dtype");
        Assert.Equal("auto", setting.DefaultText);
        Assert.Contains("auto", setting.AllowedValues);
        new TrainingConfig { Dtype = "auto" }.Validate(requirePaths: false);
    }
}
