using System.CommandLine;
using System.Globalization;
using System.Reflection;
using SdLora.Training;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>sdlora train</c>: DreamBooth-LoRA training. Every <see cref="TrainingConfig"/> option is a kebab-case flag
/// (kohya's names work too); <c>--config train.toml</c> takes the same keys, and flags given on the command line win.
/// </summary>
public static class TrainCommand
{
    public static Command Create(CliContext cli)
    {
        var cmd = new Command("train", "train a DreamBooth LoRA (kohya-style flags; --config FILE.toml takes the same keys; `train --help` lists them)")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        cmd.SetAction(r =>
        {
            var (configPath, flags) = TrainingConfigLoader.ParseCommandLine(r.UnmatchedTokens);
            var notes = new List<string>();
            if (!flags.ContainsKey("model") && (configPath is null || !TomlSetsModel(configPath)))
                flags["model"] = CliOptions.ResolveModel(null, cli);
            var config = TrainingConfigLoader.Load(configPath, flags, notes: notes);
            foreach (var n in notes) cli.Note(n);
            return Run(cli, config);
        });
        return cmd;
    }

    private static bool TomlSetsModel(string path) =>
        TrainingConfigLoader.Load(path, validate: false).Model is not null;

    /// <summary>Runs a training with progress display and prints the summary; exit code 0, or 130 when stopped with Ctrl-C.</summary>
    internal static int Run(CliContext cli, TrainingConfig config, string? realModelHint = null)
    {
        TrainingResult result;
        try { result = TrainView.Run(cli, new DreamBoothLoraTrainer(config)); }
        catch (OperationCanceledException)
        {
            cli.Console.MarkupLine("[yellow]stopped before training began[/]: nothing to save");
            return ExitCodes.Stopped;
        }
        PrintSummary(cli, result);
        if (realModelHint is not null) cli.Console.MarkupLine(realModelHint);
        return result.Cancelled ? ExitCodes.Stopped : ExitCodes.Ok;
    }

    internal static void PrintSummary(CliContext cli, TrainingResult r)
    {
        string Rel(string p) => Path.GetRelativePath(Environment.CurrentDirectory, p);
        cli.Console.WriteLine();
        if (r.Cancelled)
            cli.Console.MarkupLineInterpolated($"[yellow]stopped at step {r.Steps}/{r.TotalSteps}[/]: LoRA and state saved; continue with the same command plus --resume");
        else
            cli.Console.MarkupLineInterpolated($"[green]done[/]: {r.Steps} steps in {r.Elapsed:hh\\:mm\\:ss}{(r.SmoothedLoss is { } l ? $", loss {l:F4}" : "")}");
        if (r.LoraPath is not null) cli.Console.MarkupLineInterpolated($"  LoRA:      {Rel(r.LoraPath)}");
        foreach (var s in r.SavedLoras.Where(s => s != r.LoraPath).Distinct()) cli.Console.MarkupLineInterpolated($"  epoch:     {Rel(s)}");
        if (r.LossPng is not null) cli.Console.MarkupLineInterpolated($"  loss plot: {Rel(r.LossPng)} (values in {Path.GetFileName(r.LossCsv)})");
        if (r.Samples.Count > 0) cli.Console.MarkupLineInterpolated($"  samples:   {Rel(Path.GetDirectoryName(r.Samples[0])!)} ({r.Samples.Count} images)");
        if (r.ClassImagesGenerated > 0) cli.Console.MarkupLineInterpolated($"  class images generated: {r.ClassImagesGenerated}");
        cli.Console.MarkupLineInterpolated($"  state:     {Rel(Path.Combine(r.OutputDir, "state"))} (for --resume)");
    }

    /// <summary>The flags with their defaults, for --help.</summary>
    /// <summary>Every training flag with its default; printed after <c>train --help</c> (see <see cref="TrainHelpAction"/>).</summary>
    public static string FlagHelp()
    {
        var defaults = new TrainingConfig();
        var lines = typeof(TrainingConfig).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite)
            .Select(p =>
            {
                var v = p.GetValue(defaults);
                string shown = v switch
                {
                    null => "",
                    bool b => b ? "true" : "false",
                    double d => d.ToString("G", CultureInfo.InvariantCulture),
                    System.Collections.IEnumerable e and not string => string.Join(" ", e.Cast<object>()),
                    _ => Convert.ToString(v, CultureInfo.InvariantCulture) ?? "",
                };
                return $"  --{TrainingConfigLoader.FlagName(p.Name)}{(shown.Length > 0 ? $" (default {shown})" : "")}";
            });
        return "Options (--flag value, --flag=value; bare boolean flags mean true):\n  --config FILE.toml\n" + string.Join("\n", lines);
    }
}

/// <summary>Renders <see cref="TrainingProgress"/>: a Spectre progress bar per phase, or plain lines when output is not a terminal.</summary>
internal static class TrainView
{
    public static TrainingResult Run(CliContext cli, DreamBoothLoraTrainer trainer)
    {
        if (!cli.IsTerminal)
        {
            var last = DateTime.MinValue;
            return trainer.Train(new SyncProgress<TrainingProgress>(p =>
            {
                if (p.Phase == TrainingPhase.Info) { cli.Console.WriteLine(p.Message); return; }
                if (p.Done == p.Total || DateTime.UtcNow - last > TimeSpan.FromSeconds(5))
                {
                    last = DateTime.UtcNow;
                    cli.Console.WriteLine(Describe(p));
                }
            }), cli.Cancellation);
        }
        TrainingResult result = null!;
        cli.Console.Progress()
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                ProgressTask? task = null;
                TrainingPhase? phase = null;
                result = trainer.Train(new SyncProgress<TrainingProgress>(p =>
                {
                    if (p.Phase == TrainingPhase.Info) { cli.Console.WriteLine(p.Message); return; }
                    if (task is null || phase != p.Phase)
                    {
                        task?.StopTask();
                        task = ctx.AddTask(Describe(p).EscapeMarkup());
                        phase = p.Phase;
                    }
                    task.MaxValue = Math.Max(1, p.Total);
                    task.Value = p.Done;
                    task.Description = Describe(p).EscapeMarkup();
                }), cli.Cancellation);
                task?.StopTask();
            });
        return result;
    }

    private static string Describe(TrainingProgress p) => p.Phase switch
    {
        TrainingPhase.Training =>
            $"epoch {p.Epoch}/{p.TotalEpochs} step {p.Done}/{p.Total} " +
            (p.StepsPerSecond >= 1 ? $"{p.StepsPerSecond:F2} it/s" : $"{1 / Math.Max(1e-9, p.StepsPerSecond):F2} s/it") +
            $" ETA {p.Eta:hh\\:mm\\:ss} loss {p.SmoothedLoss:F4} lr {p.LearningRate:G3}",
        TrainingPhase.ClassImages => $"class images {p.Done}/{p.Total}",
        TrainingPhase.CachingLatents => $"caching latents {p.Done}/{p.Total}",
        TrainingPhase.Sampling => $"sample images ({p.Message}) {p.Done}/{p.Total}",
        TrainingPhase.Saving => $"saving ({p.Message}) at step {p.Done}",
        _ => p.Message,
    };
}

/// <summary>
/// The usual help, plus the list of training flags when the help is for <c>train</c> (its flags are parsed by the
/// training config loader, not declared as options, so the standard help cannot list them).
/// </summary>
public sealed class TrainHelpAction(System.CommandLine.Invocation.CommandLineAction standard) : System.CommandLine.Invocation.SynchronousCommandLineAction
{
    public override bool ClearsParseErrors => true;

    public override int Invoke(ParseResult parseResult)
    {
        int rc = standard is System.CommandLine.Invocation.SynchronousCommandLineAction sync ? sync.Invoke(parseResult) : 0;
        if (parseResult.CommandResult.Command.Name == "train") parseResult.InvocationConfiguration.Output.WriteLine("Training flags:\n" + TrainCommand.FlagHelp());
        return rc;
    }
}
