using System.Net;
using SdLora.Web.Jobs;

namespace SdLora.Web;

/// <summary>Upload bounds for one request (photos and dataset zips).</summary>
public sealed record UploadLimits
{
    public long MaxFileBytes { get; init; } = 64L << 20;
    public int MaxFiles { get; init; } = 500;
    public long MaxTotalBytes { get; init; } = 2L << 30;
    /// <summary>Largest image accepted, in pixels (width x height), checked from the file header before decoding.</summary>
    public long MaxPixels { get; init; } = 64_000_000;
}

/// <summary>What <c>sdlora serve</c> was asked for.</summary>
public sealed record ServeOptions
{
    /// <summary>Datasets, runs, outputs, the job database and job logs live here.</summary>
    public string Data { get; init; } = "sdlora-data";
    /// <summary>Checkpoints (<c>checkpoints/</c>), LoRAs (<c>lora/</c>) and BLIP (<c>blip/</c>); default <c>DATA/models</c>.</summary>
    public string? Models { get; init; }
    public int Port { get; init; } = 7860;
    public string Listen { get; init; } = "127.0.0.1";
    /// <summary>HTTP basic credentials <c>USER:PASS</c>.</summary>
    public string? Auth { get; init; }
    /// <summary>Bearer token (also accepted once as <c>?token=</c>, then kept in a cookie).</summary>
    public string? Token { get; init; }
    public string Device { get; init; } = "cpu";
    /// <summary>auto (bf16 where this CPU computes it faster, decided by <see cref="CpuProbe"/>; else fp32), fp32, bf16 or fp16.</summary>
    public string DType { get; init; } = "auto";
    /// <summary>
    /// How <c>auto</c> (and CPU bf16) learn this CPU's bf16 speed: the program passes its cached probe. Null: no
    /// measurement, so auto is fp32 and CPU bf16 keeps fp32 arithmetic. Set by the program, never by a request.
    /// </summary>
    public Func<CpuKernelProbeResult>? CpuProbe { get; init; }
    public UploadLimits Uploads { get; init; } = new();
    /// <summary>Checkpoints offered besides the models folder (name -> path), e.g. the bundled tiny model. Set by the program, never by a request.</summary>
    public IReadOnlyDictionary<string, string> ExtraCheckpoints { get; init; } = new Dictionary<string, string>();
    /// <summary>How often an idle worker looks for queued jobs that another process added (in-process enqueues wake it at once).</summary>
    public TimeSpan QueuePollInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Where the queue and job states live: null = the embedded SQLite file <c>DATA/jobs.db</c> (one machine);
    /// <c>postgres://USER[:PASS]@HOST[:PORT]/DB</c> = a PostgreSQL database shared by a server and any number of workers.
    /// </summary>
    public string? Jobs { get; init; }
    /// <summary>The Hangfire queues this process takes jobs from; null = its device kind (<c>cpu</c>, <c>cuda</c>).</summary>
    public IReadOnlyList<string>? Queues { get; init; }
    /// <summary>Whether this process runs jobs (false: <c>serve --no-worker</c>, the UI/API only).</summary>
    public bool RunJobs { get; init; } = true;
    /// <summary>
    /// With shared storage: how long a job whose worker stopped answering (killed, powered off, cut off) stays invisible
    /// before another worker takes it over. Running jobs keep it alive, so long jobs are never handed out twice.
    /// </summary>
    public TimeSpan TakeoverAfter { get; init; } = TimeSpan.FromMinutes(2);
    /// <summary>How many times a job is started at most (worker lost, or an unexpected error), before it fails for good.</summary>
    public int MaxAttempts { get; init; } = 3;
    /// <summary>Wait before the first retry of a job that hit an unexpected error; the n-th waits n² times this.</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>True when the jobs live in a database other processes share (PostgreSQL).</summary>
    public bool SharedJobs => Jobs is not null;

    public string ModelsDir => Models ?? Path.Combine(Data, "models");

    public bool IsLoopback => Listen is "localhost" || IPAddress.TryParse(Listen, out var ip) && IPAddress.IsLoopback(ip);

    /// <summary>Refuses settings that would expose the server: a non-loopback address needs <c>--auth</c> or <c>--token</c>.</summary>
    public ServeOptions Validate()
    {
        if (Port is < 0 or > 65535) throw new SdLoraException($"--port {Port} is not a TCP port: use 1-65535 (7860 is the default)");
        if (Listen != "localhost" && !IPAddress.TryParse(Listen, out _))
            throw new SdLoraException($"--listen '{Listen}' is not an IP address: use 127.0.0.1 (this machine only) or e.g. 0.0.0.0 with --auth/--token");
        if (Auth is not null && (Auth.IndexOf(':') is < 1 || Auth.EndsWith(':')))
            throw new SdLoraException("--auth must be USER:PASS with both parts non-empty");
        if (Token is not null && Token.Length < 8) throw new SdLoraException("--token must be at least 8 characters");
        if (Auth is not null && Token is not null) throw new SdLoraException("--auth and --token exclude each other: pick one");
        if (!IsLoopback && Auth is null && Token is null)
            throw new SdLoraException($"--listen {Listen} would open the server to other machines without a password: add --auth USER:PASS or --token T (or keep the default 127.0.0.1)");
        if (!ComputeOptions.IsAuto(DType)) ComputeOptions.ParseDType(DType);
        if (Jobs is not null) JobStorageFactory.ConnectionString(Jobs);
        if (TakeoverAfter < TimeSpan.FromSeconds(2)) throw new SdLoraException($"--takeover-after {TakeoverAfter.TotalSeconds}s is too short: use at least 2s (e.g. 30s; the default is 2m)");
        if (MaxAttempts is < 1 or > 100) throw new SdLoraException($"--max-attempts {MaxAttempts} must be 1-100 (3 is the default)");
        if (Queues is { } queues)
        {
            var kind = Device.Split(':')[0].Trim().ToLowerInvariant();
            foreach (var q in queues)
            {
                if (q.Length == 0 || !q.All(c => c is >= 'a' and <= 'z' or >= '0' and <= '9' or '-' or '_'))
                    throw new SdLoraException($"--queues '{q}' is not a queue name: use lowercase letters, digits, '-' and '_' (e.g. cpu, cuda, cuda-my-model)");
                if (q != kind && !q.StartsWith(kind + "-", StringComparison.Ordinal))
                    throw new SdLoraException($"--queues {q}: this process computes on {kind}, so it can take only the {kind} queue and {kind}-MODEL queues; start it with --device matching the queue");
            }
        }
        return this;
    }

    /// <summary>The server's precision for this machine: <paramref name="dtype"/> (default <see cref="DType"/>) resolved with <see cref="CpuProbe"/>.</summary>
    public ComputeOptions Compute(string? dtype = null, string? device = null) => ComputeOptions.Resolve(device ?? Device, dtype ?? DType, CpuProbe);
}
