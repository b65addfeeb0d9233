using System.CommandLine;
using System.CommandLine.Parsing;
using SdLora.Training;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>
/// <c>sdlora train</c>: DreamBooth-LoRA training (<c>--method lora</c>), full DreamBooth fine-tuning (<c>--method dreambooth</c>)
/// and textual inversion (<c>--method textual-inversion</c>). Its options are generated from the library's settings table
/// (<see cref="TrainingSettings"/>): one option per setting, named like the setting (<c>--learning-rate</c>), with kohya's
/// snake_case spelling (<c>--learning_rate</c>) as a hidden alias; <c>--config train.toml</c> takes the same keys, and
/// options given on the command line win over the file.
/// </summary>
public static class TrainCommand
{
    public static Command Create(CliContext cli)
    {
        var cmd = new Command("train", "train a DreamBooth LoRA, fine-tune the whole model (--method dreambooth) or learn a new word (--method textual-inversion); kohya's options are accepted too, --config FILE.toml takes the same settings");
        var options = new TrainOptions();
        options.AddTo(cmd);
        // --verbose belongs to the command, not to the training settings.
        var verbose = new Option<bool>("--verbose", "-v") { Description = "print each phase's time and the peak memory at the end" };
        cmd.Options.Add(verbose);
        cmd.SetAction(r =>
        {
            var notes = new List<string>();
            TrainingConfig config;
            try
            {
                config = options.ToConfig(r, notes, () => CliOptions.ResolveModel(null, cli), beforeValidation: c =>
                {
                    // fp16 on a CPU works but crawls: say so first, as generate does (auto never picks fp16: no probe needed).
                    if (c.Dtype == "fp16" || c.MixedPrecision == "fp16") cli.NoteCompute(c.ResolveCompute(null));
                });
            }
            finally { foreach (var n in notes) cli.Note(n); }
            return Run(cli, config, verbose: r.GetValue(verbose));
        });
        return cmd;
    }

    /// <summary>Runs a training with progress display and prints the summary; exit code 0, or 130 when stopped with Ctrl-C.</summary>
    internal static int Run(CliContext cli, TrainingConfig config, Action<TrainingResult>? afterSummary = null, bool verbose = false)
    {
        TrainingResult result;
        try { result = TrainView.Run(cli, TrainingSession.Create(config, cpuProbe: () => CliCompute.CachedProbe(cli.Cancellation).Result)); }
        catch (OperationCanceledException)
        {
            cli.Console.MarkupLine("[yellow]stopped before training began[/]: nothing to save (run the same command again to start over)");
            return ExitCodes.Stopped;
        }
        PrintSummary(cli, result);
        if (verbose && result.Phases is { } phases)
            PhaseReport.Print(cli, phases, config.ResolveCompute(() => CliCompute.CachedProbe(cli.Cancellation).Result));
        afterSummary?.Invoke(result);
        return result.Cancelled ? ExitCodes.Stopped : ExitCodes.Ok;
    }

    internal static void PrintSummary(CliContext cli, TrainingResult r)
    {
        string Rel(string p) => Path.GetRelativePath(Environment.CurrentDirectory, p);
        cli.Console.WriteLine();
        string kind = r.Method switch { TrainingConfig.MethodDreamBooth => "model", TrainingConfig.MethodTextualInversion => "embedding", _ => "LoRA" };
        if (r.Cancelled)
            cli.Console.MarkupLineInterpolated($"[yellow]stopped at step {r.Steps}/{r.TotalSteps}[/]: {kind} and state saved; continue with the same command plus --resume");
        else
            cli.Console.MarkupLineInterpolated($"[green]done[/]: {r.Steps} steps in {r.Elapsed:hh\\:mm\\:ss}{(r.SmoothedLoss is { } l ? $", loss {l:F4}" : "")}");
        if (r.OutputFile is not null) cli.Console.MarkupLineInterpolated($"  {(kind + ":").PadRight(10)} {Rel(r.OutputFile)}");
        foreach (var s in r.SavedOutputs.Where(s => s != r.OutputFile).Distinct()) cli.Console.MarkupLineInterpolated($"  epoch:     {Rel(s)}");
        if (r.LossPng is not null) cli.Console.MarkupLineInterpolated($"  loss plot: {Rel(r.LossPng)} (values in {Path.GetFileName(r.LossCsv)})");
        if (r.Samples.Count > 0) cli.Console.MarkupLineInterpolated($"  samples:   {Rel(Path.GetDirectoryName(r.Samples[0])!)} ({r.Samples.Count} images)");
        if (r.ClassImagesGenerated > 0) cli.Console.MarkupLineInterpolated($"  class images generated: {r.ClassImagesGenerated}");
        cli.Console.MarkupLineInterpolated($"  state:     {Rel(Path.Combine(r.OutputDir, "state"))} (for --resume)");
        if (r.Phases is { Count: > 0 } phases)
            cli.Console.MarkupLineInterpolated($"  time:      {string.Join(", ", phases.Select(p => $"{p.Phase} {FormatDuration(p.Seconds)}"))}");
    }

    /// <summary>"0.4 s", "42 s", "3 min 05 s", "1 h 02 min".</summary>
    internal static string FormatDuration(double seconds) => seconds switch
    {
        < 10 => $"{seconds:F1} s",
        < 60 => $"{seconds:F0} s",
        < 3600 => $"{(int)(seconds / 60)} min {(int)(seconds % 60):D2} s",
        _ => $"{(int)(seconds / 3600)} h {(int)(seconds % 3600 / 60):D2} min",
    };
}

/// <summary>
/// The options of <c>train</c>, one per <see cref="TrainingSetting"/>: typed, described, with the default and the allowed
/// values in the help, checked while parsing (a bad value is an error naming the option, before anything runs). kohya's
/// spellings and the kohya options sdlora has no use for are hidden options, so pasted kohya commands work.
/// </summary>
public sealed class TrainOptions
{
    private readonly List<(TrainingSetting Setting, Option<object?> Shown, Option<object?>? Hidden)> _settings = [];
    private readonly List<(KohyaOnlySetting Setting, Option<object?> Option)> _kohyaOnly = [];

    /// <summary><c>--config FILE.toml</c> (kohya's <c>--config_file</c> too).</summary>
    public Option<string?> ConfigFile { get; } = new("--config")
    {
        Description = "TOML file with training settings (same names; kohya's sections and snake_case keys work); options given here win",
        HelpName = "FILE.toml",
    };

    private readonly Option<string?> _configFileKohya = new("--config_file", "--config-file") { Hidden = true };

    public TrainOptions()
    {
        foreach (var s in TrainingSettings.All)
        {
            // Output is --out (with --output and -o) in every command.
            var shownNames = s.Name == "output" ? new[] { "--out", "--output", "-o" } : s.Name == "model" ? ["--model", "-m"] : ["--" + s.Name];
            var hiddenNames = s.AllNames.SelectMany(n => new[] { "--" + n.Replace('_', '-'), "--" + n.Replace('-', '_') })
                .Distinct().Except(shownNames).ToArray();
            var shown = Create(s, shownNames);
            // A long list of choices goes into the description, not the placeholder, so the help's first column stays narrow.
            bool longChoices = s.ValueName.Length > 24;
            shown.Description = Describe(s, longChoices);
            shown.HelpName = longChoices ? "NAME" : s.ValueName;
            var hidden = hiddenNames.Length == 0 ? null : Create(s, hiddenNames);
            if (hidden is not null) hidden.Hidden = true;
            _settings.Add((s, shown, hidden));
        }
        foreach (var k in TrainingSettings.KohyaOnly)
        {
            var option = new Option<object?>("--" + k.Name, new[] { "--" + k.KohyaName }.Where(n => n != "--" + k.Name).ToArray())
            {
                Hidden = true,
                Arity = k.IsSwitch ? ArgumentArity.ZeroOrOne : ArgumentArity.ExactlyOne,
                CustomParser = r => r.Tokens.Count == 0 ? true : r.Tokens[0].Value,
            };
            _kohyaOnly.Add((k, option));
        }
    }

    private static Option<object?> Create(TrainingSetting s, string[] names)
    {
        var option = new Option<object?>(names[0], names[1..])
        {
            Arity = s.IsSwitch ? ArgumentArity.ZeroOrOne : s.IsList ? ArgumentArity.OneOrMore : ArgumentArity.ExactlyOne,
            AllowMultipleArgumentsPerToken = s.IsList,
            CustomParser = r => Parse(s, r),
        };
        if (s.AllowedValues.Count > 0) option.CompletionSources.Add(s.AllowedValues.ToArray());
        else if (s.IsSwitch) option.CompletionSources.Add("true", "false");
        return option;
    }

    // The library converts (one set of rules and messages for TOML, forms and this command line); its message names the setting.
    private static object? Parse(TrainingSetting s, ArgumentResult r)
    {
        try
        {
            if (s.IsSwitch && r.Tokens.Count == 0) return true; // a bare --flag means true
            object? value = s.IsList ? r.Tokens.Select(t => t.Value).ToList() : r.Tokens[0].Value;
            var converted = s.Convert(value);
            if (s.AllowedValues.Count > 0 && converted is string text && !s.AllowedValues.Contains(text, StringComparer.OrdinalIgnoreCase))
                r.AddError($"--{s.Name} '{text}' is not one of {string.Join(", ", s.AllowedValues)}");
            return converted;
        }
        catch (SdLoraException e)
        {
            r.AddError(e.Message);
            return null;
        }
    }

    private static string Describe(TrainingSetting s, bool listChoices)
    {
        var text = s.Description;
        if (listChoices && s.AllowedValues.Count > 0) text += ": " + string.Join(", ", s.AllowedValues);
        if (s.KohyaName != s.Name.Replace('-', '_')) text += $" (kohya: --{s.KohyaName})";
        if (s.DefaultText.Length > 0) text += $" [default: {s.DefaultText}]";
        return text;
    }

    /// <summary>Adds every option to <paramref name="command"/>: the main settings first, then the advanced ones, then the hidden spellings.</summary>
    public void AddTo(Command command)
    {
        command.Options.Add(ConfigFile);
        command.Options.Add(_configFileKohya);
        foreach (var (_, shown, _) in _settings.OrderBy(x => x.Setting.Advanced)) command.Options.Add(shown);
        foreach (var (_, _, hidden) in _settings) if (hidden is not null) command.Options.Add(hidden);
        foreach (var (_, option) in _kohyaOnly) command.Options.Add(option);
    }

    /// <summary>
    /// The run's settings: defaults, then the <c>--config</c> file, then the options given, validated.
    /// <paramref name="defaultModel"/> supplies the model when neither names one.
    /// </summary>
    /// <param name="beforeValidation">sees the settings before they are checked (to note surprising choices even when a check fails)</param>
    public TrainingConfig ToConfig(ParseResult parse, ICollection<string> notes, Func<string>? defaultModel = null, Action<TrainingConfig>? beforeValidation = null)
    {
        string? file = Given(parse, ConfigFile) ? parse.GetValue(ConfigFile) : Given(parse, _configFileKohya) ? parse.GetValue(_configFileKohya) : null;
        var values = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (setting, shown, hidden) in _settings)
        {
            bool a = Given(parse, shown), b = hidden is not null && Given(parse, hidden);
            if (a && b) throw new SdLoraException($"--{setting.Name} is given twice (once as --{setting.KohyaName}): keep one") { Setting = setting.Name };
            if (a) values[setting.Name] = parse.GetValue(shown);
            else if (b) values[setting.Name] = parse.GetValue(hidden!);
        }
        foreach (var (k, option) in _kohyaOnly)
            if (Given(parse, option)) values[k.Name] = parse.GetValue(option);

        // Start from the defaults of the method asked for here, so the file's values are set against the right ones.
        var start = values.TryGetValue("method", out var m) && m is string method ? TrainingConfig.ForMethod(method) : new TrainingConfig();
        var config = file is null ? start : TrainingConfigLoader.ApplyToml(start, file, notes);
        config = TrainingConfigLoader.Apply(config, values, null, notes);
        if (config.Model is null && defaultModel is not null) config = config with { Model = defaultModel() };
        beforeValidation?.Invoke(config);
        return config.Validate();
    }

    private static bool Given(ParseResult parse, Option option) => parse.GetResult(option) is { Implicit: false };
}

/// <summary>Renders <see cref="TrainingProgress"/>: a Spectre progress bar per phase, or plain lines when output is not a terminal.</summary>
internal static class TrainView
{
    public static TrainingResult Run(CliContext cli, TrainingSession session)
    {
        if (!cli.IsTerminal)
        {
            var last = DateTime.MinValue;
            return session.Run(new SyncProgress<TrainingProgress>(p =>
            {
                if (p.Phase == TrainingPhase.Info) { cli.Console.WriteLine(p.Message); return; }
                if (p.Done == p.Total || DateTime.UtcNow - last > cli.PlainProgressInterval)
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
                result = session.Run(new SyncProgress<TrainingProgress>(p =>
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

    internal static string Describe(TrainingProgress p) => p.Phase switch
    {
        TrainingPhase.Training =>
            $"epoch {p.Epoch}/{p.TotalEpochs} step {p.Done}/{p.Total} {Rate(p.StepsPerSecond, "it")} ETA {p.Eta:hh\\:mm\\:ss} " +
            $"loss {p.SmoothedLoss:F4} lr {p.LearningRate:G3}",
        TrainingPhase.ClassImages =>
            $"class images {p.Done}/{p.Total}" + (p.Message.Length > 0 ? $" ({p.Message})" : "") +
            (p.StepsPerSecond > 0 ? $" {Rate(p.StepsPerSecond, "image")} ETA {p.Eta:hh\\:mm\\:ss}" : ""),
        TrainingPhase.CachingLatents => $"caching latents {p.Done}/{p.Total}",
        TrainingPhase.Sampling => $"sample images ({p.Message}) {p.Done}/{p.Total}",
        TrainingPhase.Saving => $"saving ({p.Message}) at step {p.Done}",
        _ => p.Message,
    };

    private static string Rate(double perSecond, string unit) =>
        perSecond >= 1 ? $"{perSecond:F2} {unit}/s" : $"{1 / Math.Max(1e-9, perSecond):F2} s/{unit}";
}
