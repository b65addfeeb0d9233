using System.CommandLine;
using System.Globalization;
using Microsoft.Extensions.Hosting;
using SdLora.Web;

namespace SdLora.Cli.Commands;

/// <summary>The options that put <c>serve</c> and <c>worker</c> on a shared job queue (PostgreSQL) and route jobs to workers.</summary>
public sealed class ClusterArguments
{
    public Option<string?> Jobs { get; } = new("--jobs") { Description = "shared job queue: postgres://USER[:PASS]@HOST[:PORT]/DB (default: the embedded DATA/jobs.db, one machine)" };
    public Option<string?> Queues { get; } = new("--queues") { Description = "queues to take jobs from, comma-separated: the device kind (cpu, cuda) and/or KIND-MODEL (e.g. cuda-sd15-base); default: the device kind" };
    public Option<string> TakeoverAfter { get; } = new("--takeover-after") { Description = "with --jobs: a job whose worker stopped answering is taken over by another after this (e.g. 30s, 2m)", DefaultValueFactory = _ => "2m" };
    public Option<int> MaxAttempts { get; } = new("--max-attempts") { Description = "a job is started at most this many times (worker lost, unexpected error), then fails with its last error", DefaultValueFactory = _ => 3 };

    public void AddTo(Command command)
    {
        command.Options.Add(Jobs);
        command.Options.Add(Queues);
        command.Options.Add(TakeoverAfter);
        command.Options.Add(MaxAttempts);
    }

    public ServeOptions Apply(ParseResult r, ServeOptions options) => options with
    {
        Jobs = r.GetValue(Jobs),
        Queues = r.GetValue(Queues) is { } q ? q.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : null,
        TakeoverAfter = ParseDuration(r.GetValue(TakeoverAfter)!, "--takeover-after"),
        MaxAttempts = r.GetValue(MaxAttempts),
    };

    /// <summary><c>500ms</c>, <c>30s</c>, <c>2m</c>, <c>1h</c> (a bare number is seconds).</summary>
    public static TimeSpan ParseDuration(string text, string option)
    {
        var t = text.Trim().ToLowerInvariant();
        (string number, double scale) = t.EndsWith("ms") ? (t[..^2], 0.001) : t.EndsWith('s') ? (t[..^1], 1) : t.EndsWith('m') ? (t[..^1], 60) : t.EndsWith('h') ? (t[..^1], 3600) : (t, 1);
        if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || !double.IsFinite(value) || value <= 0)
            throw new SdLoraException($"{option} '{text}' is not a duration: write e.g. 30s, 2m or 1h");
        return TimeSpan.FromSeconds(value * scale);
    }
}

/// <summary><c>sdlora worker</c>: runs jobs from the shared queue (no web UI); start one per GPU or CPU box.</summary>
public static class WorkerCommand
{
    public static Command Create(CliContext cli)
    {
        var data = new Option<string>("--data") { Description = "the shared data root (the same folder the server and every worker see)", Required = true };
        var models = new Option<string?>("--models") { Description = "models folder: checkpoints/, lora/, blip/ (default DATA/models)" };
        var compute = new ComputeArguments();
        var cluster = new ClusterArguments();
        var cmd = new Command("worker", "run jobs from a shared PostgreSQL queue (sdlora serve --jobs postgres://... queues them); one worker per GPU or CPU box")
        {
            data, models,
        };
        compute.AddTo(cmd);
        cluster.AddTo(cmd);
        // A worker only makes sense on the shared queue: say so in its help (serve's wording offers the embedded default).
        cluster.Jobs.Description = "the shared job queue: postgres://USER[:PASS]@HOST[:PORT]/DB (required: the queue sdlora serve --jobs uses)";
        cmd.SetAction(async (r, ct) =>
        {
            // dtype auto: as serve, the cached CPU probe decides once, when a job first needs it.
            var probe = new Lazy<CpuKernelProbeResult>(() => CliCompute.CachedProbe(cli.Cancellation).Result);
            var options = cluster.Apply(r, new ServeOptions
            {
                CpuProbe = () => probe.Value,
                Data = r.GetValue(data)!, Models = r.GetValue(models), Device = r.GetValue(compute.Device)!, DType = r.GetValue(compute.DType)!,
                ExtraCheckpoints = ServeCommand.BundledCheckpoints(),
            });
            if (options.Jobs is null) throw new SdLoraException("sdlora worker needs the shared queue: add --jobs postgres://USER@HOST:PORT/DB (the same as the server's)");
            compute.Read(r, cli);
            var host = SdLoraWorker.Create(options);
            await host.StartAsync(ct);
            // Ctrl-C / SIGTERM: a running training job saves its state and goes back to the queue for another worker.
            var lifetime = (IHostApplicationLifetime)host.Services.GetService(typeof(IHostApplicationLifetime))!;
            cli.Cancellation.Register(lifetime.StopApplication);
            var queues = options.Queues ?? [options.Device.Split(':')[0].Trim().ToLowerInvariant()];
            cli.Console.Profile.Out.Writer.WriteLine($"sdlora worker: queues {string.Join(",", queues)} on {options.Device}; data {Path.GetFullPath(options.Data)}; jobs {Web.Jobs.JobStorageFactory.Redact(options.Jobs)}  (Ctrl-C stops; a running job goes back to the queue)");
            await host.WaitForShutdownAsync(CancellationToken.None);
            return 0;
        });
        return cmd;
    }
}
