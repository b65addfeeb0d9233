using SdLora.Cli;
using Spectre.Console;
using TorchSharp;
using Xunit;

namespace SdLora.Tests.Cli;

public class CliContextTests
{
    [Fact]
    public void First_interrupt_cancels_the_token_and_is_handled_second_lets_the_process_end()
    {
        var err = new StringWriter();
        using var cli = CliContext.Plain(new StringWriter(), err);
        Assert.False(cli.Cancellation.IsCancellationRequested);

        Assert.True(cli.Interrupt());
        Assert.True(cli.Cancellation.IsCancellationRequested);
        Assert.Contains("stopping after the current step", err.ToString());

        Assert.False(cli.Interrupt());
    }

    [Fact]
    public void Plain_console_writes_no_ansi_codes_and_does_not_wrap_long_lines()
    {
        var output = new StringWriter();
        using var cli = CliContext.Plain(output);
        var longLine = "sdlora generate --model v1-5.safetensors " + string.Join(" ", Enumerable.Range(0, 40).Select(i => $"--word{i}"));
        cli.Console.MarkupLine($"[yellow]note[/] {Markup.Escape(longLine)}");
        cli.Console.Write(new Table().AddColumn("module").AddRow(new string('x', 150)));

        var text = output.ToString();
        Assert.False(text.Contains((char)27), "ANSI escape in plain output");
        Assert.Contains("note " + longLine + Environment.NewLine, text);
        Assert.Contains(new string('x', 150), text);
    }

    [Fact]
    public void Plain_progress_prints_lines_with_counts_and_the_last_report()
    {
        var output = new StringWriter();
        using var cli = new CliContext(CliContext.PlainConsole(output), new StringWriter(), isTerminal: false) { PlainProgressInterval = TimeSpan.FromHours(1) };
        int result = cli.Bar("generating", report =>
        {
            for (int i = 1; i <= 10; i++) report(i, 10, "batch 1/1");
            return 7;
        });
        Assert.Equal(7, result);
        var lines = output.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);
        // The first report (so a pipe sees that work began) and the last; nothing in between within the interval.
        Assert.Equal(2, lines.Length);
        Assert.StartsWith("generating batch 1/1 1/10", lines[0]);
        Assert.StartsWith("generating batch 1/1 10/10", lines[1]);
        Assert.False(output.ToString().Contains((char)27), "ANSI escape in plain output");
    }

    [Fact]
    public void Help_names_the_program_sdlora()
    {
        var run = CliRunner.Run("--help");
        Assert.Equal(0, run.ExitCode);
        Assert.Contains("sdlora [command] [options]", run.Out);
        Assert.DoesNotContain("sdlora-cli", run.Out);
        Assert.Contains("sdlora lora resize", CliRunner.Run("lora", "resize", "--help").Out);
    }

    [Theory]
    [InlineData("'abc'", "generate", "--steps", "abc", "-p", "x")]
    [InlineData("--no-such-option", "train", "--no-such-option")]
    [InlineData("--rank", "lora", "resize", "a.safetensors", "--rank")]
    public void A_mistyped_command_line_names_the_problem_and_the_help_in_a_few_lines(string named, params string[] args)
    {
        var run = CliRunner.Run(args);
        Assert.Equal(ExitCodes.UserError, run.ExitCode);
        var lines = run.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length <= 3, run.ToString());
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(named, run.Err);
        string command = args[0] == "lora" ? "sdlora lora resize" : "sdlora " + args[0];
        Assert.Equal($"see: {command} --help", lines[^1].Trim());
        Assert.DoesNotContain("Options:", run.Out + run.Err);
    }

    [Fact]
    public void User_error_is_one_line_with_exit_code_2_and_no_stack_trace()
    {
        var run = CliRunner.Run("lora", "inspect", "/no/such/lora.safetensors");
        Assert.Equal(SdLoraException.ExitCode, run.ExitCode);
        Assert.StartsWith("error: ", run.Err);
        Assert.Single(run.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.False(CliRunner.HasStackTrace(run.Err + run.Out), run.ToString());
    }

    [Fact]
    public void IO_errors_are_user_errors_and_debug_adds_the_stack_trace()
    {
        var plain = SdLoraCli.Report(new UnauthorizedAccessException("Access to the path '/proc/x' is denied."), CliContext.Plain(new StringWriter(), new StringWriter()));
        Assert.Equal(SdLoraException.ExitCode, plain);

        var err = new StringWriter();
        using var cli = CliContext.Plain(new StringWriter(), err);
        cli.Debug = true;
        Exception thrown;
        try { throw new IOException("disk full"); } catch (IOException e) { thrown = e; }
        Assert.Equal(SdLoraException.ExitCode, SdLoraCli.Report(thrown, cli));
        Assert.StartsWith("error: disk full", err.ToString());
        Assert.True(CliRunner.HasStackTrace(err.ToString()));
    }

    [Fact]
    public void Parse_errors_exit_with_the_user_error_code()
    {
        var run = CliRunner.Run("lora", "resize", "x.safetensors", "--rank", "many");
        Assert.Equal(SdLoraException.ExitCode, run.ExitCode);
        Assert.False(CliRunner.HasStackTrace(run.Err + run.Out));
    }

    [Fact]
    public async Task Threads_option_is_applied_by_the_context_for_any_command()
    {
        // The current count, so this test changes nothing for tests running beside it.
        int current = torch.get_num_threads();
        var output = new StringWriter();
        using var cli = CliContext.Plain(output, new StringWriter());
        int rc = await SdLoraCli.RunAsync(["tokenize", "a dog", "--threads", current.ToString()], cli);
        Assert.Equal(0, rc);
        Assert.Equal(current, cli.Threads);

        var bad = CliRunner.Run("tokenize", "a dog", "--threads", "0");
        Assert.Equal(SdLoraException.ExitCode, bad.ExitCode);
        Assert.Contains("--threads", bad.Err);
    }

    [Theory]
    [InlineData("--dtype", "fp16", true)]
    [InlineData("--mixed-precision", "fp16", true)]
    [InlineData("--dtype", "fp32", false)]
    public void Train_notes_fp16_on_the_cpu_before_it_starts(string option, string value, bool noted)
    {
        using var dir = Fixtures.TempDir();
        var run = CliRunner.Run("train", option, value, "--output", dir.File("run"));   // no --data: stops at once
        Assert.Equal(ExitCodes.UserError, run.ExitCode);
        Assert.Equal(noted, run.Err.Contains("note: fp16 on the CPU is emulated", StringComparison.Ordinal));
        Assert.Contains("error: data is required", run.Err);
    }

    [Fact]
    public void Fp16_on_the_cpu_gets_a_one_line_note_on_stderr()
    {
        var err = new StringWriter();
        using var cli = CliContext.Plain(new StringWriter(), err);
        cli.NoteCompute(ComputeOptions.Parse("cpu", "fp16"));
        cli.NoteCompute(ComputeOptions.Parse("cpu", "fp32"));
        var lines = err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains("fp16", lines[0]);
    }
}
