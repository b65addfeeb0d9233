using System.CommandLine;
using SdLora.Cli.Commands;

namespace SdLora.Cli;

/// <summary>Process exit codes of <c>sdlora</c>.</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    /// <summary>The command ran but its result is negative (a checkpoint sdlora cannot use, every caption failed).</summary>
    public const int Failed = 1;
    /// <summary>A mistake the user can fix (bad option, missing or unwritable file): one line on stderr, no stack trace.</summary>
    public const int UserError = SdLoraException.ExitCode;
    /// <summary>A bug: one line on stderr (the stack trace with <c>--debug</c>).</summary>
    public const int InternalError = 70;
    /// <summary>Stopped with Ctrl-C (what was finished is kept).</summary>
    public const int Stopped = 130;
}

/// <summary>The <c>sdlora</c> command tree and the one place that turns exceptions into messages and exit codes.</summary>
public static class SdLoraCli
{
    /// <summary>The program's name as users type it (the tool command; help and messages use it).</summary>
    public const string ProgramName = "sdlora";

    /// <summary>Options every command has (recursive on the root); the context applies them before the command runs.</summary>
    public const string ThreadsOption = "--threads", DebugOption = "--debug";

    /// <summary>
    /// The root command, named <c>sdlora</c> whatever the executable is called (<c>sdlora-cli.dll</c>, the tool shim):
    /// a plain command with the help and version options, since <see cref="RootCommand"/> takes the executable's file name.
    /// </summary>
    public static Command CreateRoot(CliContext cli)
    {
        var root = new Command(ProgramName, "sdlora: personalize Stable Diffusion 1.x with LoRA and DreamBooth")
        {
            new System.CommandLine.Help.HelpOption(),
            new VersionOption(),
        };
        root.Options.Add(new Option<int?>(ThreadsOption)
        {
            Description = "torch CPU threads for this run (default: torch's choice; 1 is often fastest when the machine is busy)",
            Recursive = true,
        });
        root.Options.Add(new Option<bool>(DebugOption) { Description = "print the stack trace with an error (for bug reports)", Recursive = true });
        foreach (var command in CommandCatalog.All(cli)) root.Subcommands.Add(command);
        return root;
    }

    /// <summary>Parses <paramref name="args"/>, applies the global options, runs the command; never throws for a user's mistake.</summary>
    public static async Task<int> RunAsync(string[] args, CliContext cli)
    {
        var root = CreateRoot(cli);
        ParseResult parse = root.Parse(args);
        cli.Debug = args.Contains(DebugOption);
        try
        {
            if (parse.Errors.Count == 0)
            {
                cli.Debug |= parse.GetValue<bool>(DebugOption);
                // The web UI runs jobs side by side (a training job and a generation): OpenMP threads that spin while they
                // wait would take the cores the other job needs. Set before libtorch loads (see OpenMpWaitPolicy).
                if (parse.CommandResult.Command.Name == ServeCommand.Name) OpenMpWaitPolicy.PreferPassive();
                cli.ApplyThreads(parse.GetValue<int?>(ThreadsOption));
                // Loading libtorch costs half a second: not for --help.
                if (parse.Action is not System.CommandLine.Help.HelpAction) LibTorchLog.QuietWarnings();
            }
            else if (parse.CommandResult.Command != root)
            {
                // A mistyped option: say what is wrong and where the options are, not a screen of help.
                foreach (var error in parse.Errors) cli.Error.WriteLine($"error: {OneLine(error.Message)}");
                cli.Error.WriteLine($"see: {CommandPath(parse.CommandResult)} --help");
                return ExitCodes.UserError;
            }
            int rc = await parse.InvokeAsync(new InvocationConfiguration
            {
                EnableDefaultExceptionHandler = false,
                // Ctrl-C belongs to the context (its token reaches every command); System.CommandLine must not take it.
                ProcessTerminationTimeout = null,
                Output = cli.Console.Profile.Out.Writer,
                Error = cli.Error,
            });
            return parse.Errors.Count > 0 && rc != ExitCodes.Ok ? ExitCodes.UserError : rc;
        }
        catch (Exception e)
        {
            return Report(e, cli);
        }
    }

    /// <summary>The words that name a command, e.g. <c>sdlora lora resize</c>.</summary>
    private static string CommandPath(System.CommandLine.Parsing.CommandResult result)
    {
        var names = new List<string>();
        for (System.CommandLine.Parsing.SymbolResult? r = result; r is not null; r = r.Parent)
            if (r is System.CommandLine.Parsing.CommandResult c) names.Add(c.Command is RootCommand ? "sdlora" : c.Command.Name);
        names.Reverse();
        return string.Join(" ", names);
    }

    /// <summary>One line on stderr for any failure; the stack trace only with <c>--debug</c> (or for a bug, a hint to use it).</summary>
    public static int Report(Exception e, CliContext cli)
    {
        var inner = e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerExceptions[0] : e;
        int rc;
        switch (inner)
        {
            case OperationCanceledException:
                cli.Error.WriteLine("stopped.");
                rc = ExitCodes.Stopped;
                break;
            case SdLoraException:
                cli.Error.WriteLine($"error: {OneLine(inner.Message)}");
                rc = ExitCodes.UserError;
                break;
            case IOException or UnauthorizedAccessException:
                cli.Error.WriteLine($"error: {OneLine(inner.Message)}");
                rc = ExitCodes.UserError;
                break;
            default:
                cli.Error.WriteLine($"error: unexpected {inner.GetType().Name}: {OneLine(inner.Message)}" +
                                    (cli.Debug ? "" : " (run again with --debug for the stack trace, and please report it)"));
                rc = ExitCodes.InternalError;
                break;
        }
        if (cli.Debug) cli.Error.WriteLine(inner.ToString());
        return rc;
    }

    private static string OneLine(string message) => string.Join(" ", message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
