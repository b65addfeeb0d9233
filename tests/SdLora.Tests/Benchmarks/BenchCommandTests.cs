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
        Assert.Equal(["unet", "load", "generate", "train", "caption", "vae", "workflow"], bench.Subcommands.Select(c => c.Name));
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

    [Fact]
    public void Doctor_json_reports_cpu_flags_probe_choice_and_cache_path()
    {
        var run = SdLora.Tests.Cli.CliRunner.Run("doctor", "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        using var doc = System.Text.Json.JsonDocument.Parse(run.Out);
        var r = doc.RootElement;
        Assert.False(string.IsNullOrEmpty(r.GetProperty("cpu").GetProperty("model").GetString()));
        Assert.Equal(System.Text.Json.JsonValueKind.Array, r.GetProperty("cpu").GetProperty("flags").ValueKind);
        Assert.True(r.GetProperty("probe").GetProperty("fp32_gflops").GetDouble() > 0);
        Assert.Contains(r.GetProperty("dtype_auto").GetString(), new[] { "fp32", "bf16" });
        Assert.Equal(CpuKernelProbeCache.DefaultPath, r.GetProperty("cache").GetString());
        // What doctor reports is what generate would pick: both come from the same cached probe.
        using var cli = SdLora.Cli.CliContext.Plain(new StringWriter(), new StringWriter());
        var auto = SdLora.Cli.Commands.CliCompute.Resolve("cpu", "auto", cli);
        Assert.Equal(r.GetProperty("dtype_auto").GetString(), ComputeOptions.DTypeName(auto.DType));
    }

    [Fact]
    public void Every_bench_command_offers_json()
    {
        using var cli = SdLora.Cli.CliContext.Plain(new StringWriter());
        var bench = SdLora.Cli.SdLoraCli.CreateRoot(cli).Subcommands.Single(c => c.Name == "bench");
        foreach (var command in bench.Subcommands)
            Assert.Contains(command.Options, o => o.Name == "--json");
    }

    [Fact]
    public void Bench_vae_json_is_one_object_with_what_ran_dtype_time_work_ceiling_efficiency_memory_and_cpu()
    {
        var run = SdLora.Tests.Cli.CliRunner.Run("bench", "vae", "--size", "64", "--no-encode", "--dtype", "fp32", "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        using var doc = System.Text.Json.JsonDocument.Parse(run.Out);
        var r = doc.RootElement;
        Assert.Equal("vae", r.GetProperty("benchmark").GetString());
        Assert.Contains("64x64", r.GetProperty("what").GetString());
        Assert.Equal("fp32", r.GetProperty("dtype").GetString());
        foreach (var key in new[] { "seconds_per_image", "gflop", "ceiling_gflops", "efficiency", "peak_rss_bytes" })
            Assert.True(r.GetProperty(key).GetDouble() > 0, key);
        Assert.Equal(SdLora.Benchmarks.VaeFlops.Decode(SdLora.Models.AutoencoderKLConfig.StableDiffusion15, 1, 8, 8) / 1e9, r.GetProperty("gflop").GetDouble(), 6);
        Assert.Equal(System.Text.Json.JsonValueKind.Array, r.GetProperty("cpu").GetProperty("flags").ValueKind);
        Assert.Equal(TorchSharp.torch.get_num_threads(), r.GetProperty("threads").GetInt32());
    }

    [Fact]
    public void Bench_json_stays_one_object_on_stdout_when_dtype_auto_explains_its_choice()
    {
        var run = SdLora.Tests.Cli.CliRunner.Run("bench", "vae", "--size", "64", "--no-encode", "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        using var doc = System.Text.Json.JsonDocument.Parse(run.Out);
        Assert.Equal("auto", doc.RootElement.GetProperty("dtype_requested").GetString());
        Assert.Contains(doc.RootElement.GetProperty("dtype").GetString(), new[] { "fp32", "bf16" });
    }
}
