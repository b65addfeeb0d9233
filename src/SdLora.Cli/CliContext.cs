using System.Diagnostics;
using System.Runtime.InteropServices;
using Spectre.Console;
using TorchSharp;

namespace SdLora.Cli;

/// <summary>
/// Everything a command needs from the process it runs in, made once per run and handed to every command:
/// where to print (a terminal gets colours and live bars; a pipe or file gets plain lines, no ANSI codes, no wrapping),
/// the Ctrl-C token (the first Ctrl-C cancels it and the command stops after its current step, keeping what it made;
/// a second one ends the process), progress rendering, and the process-wide torch settings that only the host may change.
/// </summary>
public sealed class CliContext : IDisposable
{
    /// <summary>Width given to a console that is not a terminal: long enough that Spectre never hard-wraps a line.</summary>
    private const int UnwrappedWidth = 32_767;

    private readonly CancellationTokenSource _stop = new();
    private readonly List<IDisposable> _signalHandlers = [];
    private int _interrupts;

    /// <param name="console">standard output, as a Spectre console</param>
    /// <param name="error">standard error (notes, warnings, errors); plain text</param>
    /// <param name="isTerminal">whether <paramref name="console"/> is an interactive terminal (live bars, spinners)</param>
    public CliContext(IAnsiConsole console, TextWriter error, bool isTerminal)
    {
        Console = console;
        Error = error;
        IsTerminal = isTerminal;
    }

    /// <summary>Standard output. Commands print results here (markup is fine: a plain console drops it).</summary>
    public IAnsiConsole Console { get; }

    /// <summary>Standard error: notes, warnings and the one-line error. Never markup.</summary>
    public TextWriter Error { get; }

    /// <summary>True when standard output is an interactive terminal.</summary>
    public bool IsTerminal { get; }

    /// <summary>Cancelled by the first Ctrl-C (or <see cref="Interrupt"/>): long work stops after its current step and keeps what it made.</summary>
    public CancellationToken Cancellation => _stop.Token;

    /// <summary>Print a stack trace with errors (<c>--debug</c>).</summary>
    public bool Debug { get; set; }

    /// <summary>The torch intra-op thread count this run asked for (<c>--threads</c>), or null for torch's own choice.</summary>
    public int? Threads { get; private set; }

    /// <summary>Seconds between plain progress lines when output is not a terminal.</summary>
    public TimeSpan PlainProgressInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The context of this process: a terminal or plain output by what stdout is; Ctrl-C (and SIGTERM) wired to <see cref="Cancellation"/>.</summary>
    public static CliContext ForProcess()
    {
        bool terminal = !System.Console.IsOutputRedirected && Environment.GetEnvironmentVariable("TERM") != "dumb";
        var console = terminal ? AnsiConsole.Console : PlainConsole(System.Console.Out);
        var context = new CliContext(console, System.Console.Error, terminal);
        context.InstallSignalHandlers();
        // The process is ours: malloc kept warm for tensors (see MallocTuning for the measurements).
        MallocTuning.ApplyForTensorWork();
        return context;
    }

    /// <summary>A context printing plain text to <paramref name="output"/> (tests; output that is not a terminal).</summary>
    public static CliContext Plain(TextWriter output, TextWriter? error = null) =>
        new(PlainConsole(output), error ?? output, isTerminal: false);

    /// <summary>A Spectre console without colours, ANSI codes, live widgets or hard line wrapping.</summary>
    public static IAnsiConsole PlainConsole(TextWriter output)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(output),
        });
        console.Profile.Width = UnwrappedWidth;
        return console;
    }

    /// <summary>
    /// What a Ctrl-C does: the first cancels <see cref="Cancellation"/> and returns true (the signal is handled, the
    /// process goes on to finish its current step); any later one returns false (the process ends at once).
    /// </summary>
    public bool Interrupt()
    {
        if (Interlocked.Increment(ref _interrupts) > 1) return false;
        Error.WriteLine("stopping after the current step (Ctrl-C again to quit at once)...");
        _stop.Cancel();
        return true;
    }

    private void InstallSignalHandlers()
    {
        void Handle(PosixSignalContext signal) => signal.Cancel = Interrupt();
        _signalHandlers.Add(PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle));
        _signalHandlers.Add(PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle));
    }

    /// <summary>Sets torch's intra-op thread count for this process (<c>--threads</c>); null leaves torch's choice.</summary>
    public void ApplyThreads(int? threads)
    {
        if (threads is null) return;
        if (threads < 1) throw new SdLoraException($"--threads {threads}: give a positive number of threads (1 is often fastest on a busy machine)");
        torch.set_num_threads(threads.Value);
        Threads = threads;
    }

    /// <summary>A one-line note on standard error (what the program chose for the user, and how to change it).</summary>
    public void Note(string message) => Error.WriteLine("note: " + message);

    /// <summary>A one-line warning on standard error.</summary>
    public void Warning(string message) => Error.WriteLine("warning: " + message);

    /// <summary>Notes the compute choices that work but surprise: fp16 on a CPU is emulated, far slower than fp32.</summary>
    public void NoteCompute(ComputeOptions compute)
    {
        if (compute.Device.type == DeviceType.CPU && compute.DType == torch.ScalarType.Float16)
            Note("fp16 on the CPU is emulated and runs tens of times slower than fp32; use --dtype fp32 (or bf16 on CPUs with AVX512-BF16/AMX)");
    }

    /// <summary>Runs <paramref name="work"/> under a spinner labelled <paramref name="label"/> (a plain line when not a terminal).</summary>
    public T Status<T>(string label, Func<T> work)
    {
        if (!IsTerminal)
        {
            Console.WriteLine(label + "...");
            return work();
        }
        return Console.Status().Start(label.EscapeMarkup(), _ => work());
    }

    /// <summary>
    /// Runs <paramref name="work"/> with a progress bar fed by (done, total, label) reports, showing the rate and ETA.
    /// When output is not a terminal: a plain line for the first report, then every <see cref="PlainProgressInterval"/>, and the last.
    /// Reports must come on the calling thread (use <see cref="SyncProgress{T}"/>).
    /// </summary>
    public T Bar<T>(string title, Func<Action<int, int, string>, T> work)
    {
        var clock = Stopwatch.StartNew();
        if (!IsTerminal)
        {
            TimeSpan? last = null;
            return work((done, total, label) =>
            {
                if (last is null || done >= total || clock.Elapsed - last >= PlainProgressInterval)
                {
                    last = clock.Elapsed;
                    Console.WriteLine(ProgressLine(title, label, done, total, clock.Elapsed));
                }
            });
        }
        T result = default!;
        Console.Progress()
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(title.EscapeMarkup());
                result = work((done, total, label) =>
                {
                    task.MaxValue = Math.Max(1, total);
                    task.Value = done;
                    task.Description = ProgressLine(title, label, done, total, clock.Elapsed).EscapeMarkup();
                });
            });
        return result;
    }

    /// <summary><c>generating batch 1/2 5/40 3.10 it/s, ETA 00:00:11</c>.</summary>
    public static string ProgressLine(string title, string label, int done, int total, TimeSpan elapsed)
    {
        var text = $"{title} {label} {done}/{total}".Replace("  ", " ");
        if (done <= 0) return text;
        double perItem = elapsed.TotalSeconds / done;
        var eta = TimeSpan.FromSeconds(perItem * Math.Max(0, total - done));
        string rate = perItem >= 1 ? $"{perItem:F2} s/it" : $"{1 / Math.Max(perItem, 1e-9):F2} it/s";
        return $"{text} {rate}, ETA {eta:hh\\:mm\\:ss}";
    }

    public void Dispose()
    {
        foreach (var h in _signalHandlers) h.Dispose();
        _signalHandlers.Clear();
        _stop.Dispose();
    }
}
