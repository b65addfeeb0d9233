using System.CommandLine;
using System.Diagnostics;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary>Options several commands share, spelled the same everywhere.</summary>
public static class CliOptions
{
    public static Option<string?> Model() => new("--model", "-m")
    {
        Description = "SD1.x checkpoint: a .safetensors/.ckpt file or a diffusers folder (default: the bundled tiny test model)",
    };

    public static Option<string?> Config() => new("--config")
    {
        Description = "LDM YAML config for a single-file checkpoint (default: NAME.yaml beside it, else dims from tensor shapes)",
    };

    public static Option<string> Device() => new("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };

    public static Option<string> DType() => new("--dtype") { Description = CliCompute.DTypeDescription, DefaultValueFactory = _ => "auto" };

    /// <summary>The bundled tiny SD1.5-shaped model with random weights (tests, demos, trying the commands out).</summary>
    public static string BundledTinyModel => Path.Combine(AppContext.BaseDirectory, "assets", "tiny-sd15");

    public static string ResolveModel(string? model)
    {
        if (model is not null) return model;
        AnsiConsole.MarkupLine("[grey]no --model given: using the bundled tiny random-weight model (it makes noise, not pictures); pass --model v1-5-pruned-emaonly.safetensors for real images[/]");
        return BundledTinyModel;
    }
}

/// <summary>Ctrl-C handling: the first press asks running work to stop after its current step; a second press exits at once.</summary>
public static class CliCancellation
{
    private static readonly CancellationTokenSource Source = new();
    private static int _presses;

    public static CancellationToken Token => Source.Token;

    public static void Install()
    {
        Console.CancelKeyPress += (_, e) =>
        {
            if (Interlocked.Increment(ref _presses) == 1)
            {
                e.Cancel = true;
                Console.Error.WriteLine("stopping after the current step (Ctrl-C again to quit at once)...");
                Source.Cancel();
            }
        };
    }
}

/// <summary>Progress rendering for long library calls.</summary>
public static class CliProgress
{
    public static T Status<T>(string label, Func<T> work)
    {
        if (!AnsiConsole.Profile.Capabilities.Interactive)
        {
            AnsiConsole.MarkupLineInterpolated($"[grey]{label}...[/]");
            return work();
        }
        return AnsiConsole.Status().Start(label.EscapeMarkup(), _ => work());
    }

    /// <summary>
    /// Runs <paramref name="work"/> with a progress bar fed by (done, total, label) reports; shows s/it and ETA.
    /// Non-interactive output (CI, pipes) gets a plain line every few seconds instead.
    /// </summary>
    public static T Bar<T>(string title, Func<Action<int, int, string>, T> work)
    {
        var clock = Stopwatch.StartNew();
        string Rate(int done, int total)
        {
            if (done == 0) return "";
            double per = clock.Elapsed.TotalSeconds / done;
            var eta = TimeSpan.FromSeconds(per * Math.Max(0, total - done));
            return per >= 1 ? $"{per:F2} s/it, ETA {eta:hh\\:mm\\:ss}" : $"{1 / per:F2} it/s, ETA {eta:hh\\:mm\\:ss}";
        }
        if (!AnsiConsole.Profile.Capabilities.Interactive)
        {
            var last = TimeSpan.Zero;
            return work((done, total, label) =>
            {
                if (done == total || clock.Elapsed - last > TimeSpan.FromSeconds(5))
                {
                    last = clock.Elapsed;
                    Console.WriteLine($"{title}: {label} {done}/{total} {Rate(done, total)}");
                }
            });
        }
        T result = default!;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(title.EscapeMarkup());
                result = work((done, total, label) =>
                {
                    task.MaxValue = Math.Max(1, total);
                    task.Value = done;
                    task.Description = $"{title} {label} {done}/{total} {Rate(done, total)}".EscapeMarkup();
                });
            });
        return result;
    }
}
