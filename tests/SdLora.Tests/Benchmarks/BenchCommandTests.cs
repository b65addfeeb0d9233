using Xunit;

namespace SdLora.Tests.Benchmarks;

public class BenchCommandTests
{
    [Fact]
    public void Bench_train_help_lists_only_its_own_options()
    {
        var run = SdLora.Tests.Cli.CliRunner.Run("bench", "train", "--help");
        Assert.Equal(0, run.ExitCode);
        foreach (var option in new[] { "--dtype", "--checkpointing", "--steps", "--size", "--rank", "--threads", "--cpu-low-precision" })
            Assert.Contains(option, run.Out);
        Assert.DoesNotContain("--instance-prompt", run.Out);
        Assert.DoesNotContain("--learning-rate", run.Out);
    }

    [Fact]
    public void Every_bench_command_takes_threads_from_the_global_option()
    {
        using var cli = SdLora.Cli.CliContext.Plain(new StringWriter());
        var root = SdLora.Cli.SdLoraCli.CreateRoot(cli);
        var threads = root.Options.Single(o => o.Name == SdLora.Cli.SdLoraCli.ThreadsOption);
        Assert.True(threads.Recursive);
        var bench = root.Subcommands.Single(c => c.Name == "bench");
        Assert.Equal(["unet", "load", "generate", "train", "caption"], bench.Subcommands.Select(c => c.Name));
        foreach (var command in bench.Subcommands)
            Assert.Empty(root.Parse(["bench", command.Name, "--threads", "1", "--help"]).Errors);
    }

    [Theory]
    [InlineData("upcast", CpuLowPrecision.Upcast)]
    [InlineData(" Native ", CpuLowPrecision.Native)]
    public void Cpu_low_precision_names_parse(string name, CpuLowPrecision expected) =>
        Assert.Equal(expected, ComputeOptions.ParseCpuLowPrecision(name));

    [Fact]
    public void Unknown_cpu_low_precision_name_says_what_to_use()
    {
        var e = Assert.Throws<SdLoraException>(() => ComputeOptions.ParseCpuLowPrecision("fast"));
        Assert.Contains("use upcast or native", e.Message);
    }
}
