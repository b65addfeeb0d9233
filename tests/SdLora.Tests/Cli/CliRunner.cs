using SdLora.Cli;

namespace SdLora.Tests.Cli;

/// <summary>What one in-process <c>sdlora</c> run printed and returned.</summary>
public sealed record CliRun(int ExitCode, string Out, string Err)
{
    public override string ToString() => $"exit {ExitCode}\nstdout:\n{Out}\nstderr:\n{Err}";
}

/// <summary>Runs the real command tree in this process with plain (non-terminal) output captured.</summary>
public static class CliRunner
{
    public static CliRun Run(params string[] args) => Run(null, args);

    /// <param name="prepare">called with the context before the run (e.g. to press Ctrl-C at once)</param>
    public static CliRun Run(Action<CliContext>? prepare, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        using var cli = new CliContext(CliContext.PlainConsole(output), error, isTerminal: false);
        prepare?.Invoke(cli);
        int rc = SdLoraCli.RunAsync(args, cli).GetAwaiter().GetResult();
        return new CliRun(rc, output.ToString(), error.ToString());
    }

    /// <summary>True when <paramref name="text"/> holds a .NET stack trace.</summary>
    public static bool HasStackTrace(string text) =>
        text.Contains("   at ", StringComparison.Ordinal) || text.Contains("--- End of", StringComparison.Ordinal);
}
