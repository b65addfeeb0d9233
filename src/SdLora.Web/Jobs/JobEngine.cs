using System.Collections.Concurrent;
using System.Data.Common;
using System.Text.Json;
using Hangfire;
using Hangfire.Common;
using Hangfire.States;
using Hangfire.Storage;
using Hangfire.Storage.SQLite;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace SdLora.Web.Jobs;

/// <summary>A process taking jobs: the engine's name for it, its queues, when it started and last said it was alive.</summary>
public sealed record WorkerInfo(string Name, IReadOnlyList<string> Queues, DateTimeOffset Started, DateTimeOffset? Heartbeat);

/// <summary>
/// The job queue, on Hangfire: its storage holds the queue and job states durably (the embedded SQLite file
/// <c>DATA/jobs.db</c> on one machine, or a shared PostgreSQL database for a server and many workers), and one
/// Hangfire worker per process runs one job at a time on its own thread. Our part: job records and event logs
/// (<see cref="JobStore"/>), the job types (<see cref="IJobHandler"/>), cancellation that reaches a running job at
/// once, queue routing (device kind, model), leases on the folders a job writes, and bounded retries.
/// Everything is built on instances (no Hangfire globals), so several servers can live in one process (tests).
/// </summary>
public sealed class JobEngine : IHostedService, IDisposable
{
    private readonly ServeOptions _options;
    private readonly DataFolders _folders;
    private readonly JobStore _store;
    private readonly Dictionary<string, IJobHandler> _handlers;
    private readonly ILogger<JobEngine> _logger;
    private readonly ConcurrentDictionary<string, CancellationTokenSource> _running = new();
    private readonly JobFilterCollection _filters = new();
    private JobStorage? _storage;
    private BackgroundJobClient? _client;
    private BackgroundJobServer? _server;
    private FileStream? _dataLock;

    public JobEngine(ServeOptions options, DataFolders folders, JobStore store, IEnumerable<IJobHandler> handlers, ILogger<JobEngine> logger)
    {
        _options = options;
        _folders = folders;
        _store = store;
        _handlers = handlers.ToDictionary(h => h.Type);
        _logger = logger;
        // An unexpected error (lost connection, full disk) is retried a bounded number of times; the runner decides when
        // to give up, and fails a bad setting at once (JobFailedException: it would fail the same way again).
        _filters.Add(new AutomaticRetryAttribute
        {
            Attempts = options.MaxAttempts, LogEvents = false, ExceptOn = [typeof(JobFailedException)],
            DelayInSecondsByAttemptFunc = attempt => (int)Math.Ceiling(options.RetryDelay.TotalSeconds * attempt * attempt),
        });
        _filters.Add(new KeepHistoryFilter());
        _filters.Add(new KeepQueueFilter(store));
    }

    /// <summary>The Hangfire queue of this server's device ("cpu", "cuda", ...).</summary>
    public string Queue => _options.Device.Split(':')[0].Trim().ToLowerInvariant();
    public JobStore Store => _store;
    /// <summary>The queues this process takes jobs from: <c>--queues</c>, else its device kind.</summary>
    public IReadOnlyList<string> Queues => _options.Queues ?? [Queue];
    /// <summary>This process as the engine and the leases name it (host, process id, a random tag).</summary>
    public string WorkerName { get; } = $"{Environment.MachineName.ToLowerInvariant()}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..6]}";
    public int MaxAttempts => _options.MaxAttempts;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (!_options.SharedJobs)
        {
            // One server per data folder: the lock makes "every job marked running is orphaned" true at start.
            var lockPath = Path.Combine(_folders.Root, ".serve.lock");
            try { _dataLock = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException)
            {
                throw new SdLoraException($"{_folders.Root} is in use by another sdlora serve: stop it, or pass another --data folder (or share it through --jobs postgres://...)");
            }
        }
        _storage = JobStorageFactory.Create(_options, _folders);
        _client = new BackgroundJobClient(_storage, _filters);
        // With shared storage other processes may be running these jobs right now: a job whose worker died is taken over
        // by the engine after --takeover-after instead.
        if (!_options.SharedJobs) RecoverInterruptedJobs();
        if (!_options.RunJobs) return Task.CompletedTask;
        _server = new BackgroundJobServer(new BackgroundJobServerOptions
        {
            WorkerCount = 1,
            Queues = Queues.ToArray(),
            ServerName = WorkerName,
            HeartbeatInterval = TimeSpan.FromSeconds(Math.Clamp(_options.TakeoverAfter.TotalSeconds / 4, 1, 30)),
            ServerCheckInterval = TimeSpan.FromSeconds(Math.Clamp(_options.TakeoverAfter.TotalSeconds / 2, 1, 300)),
            ServerTimeout = _options.TakeoverAfter * 2,
            CancellationCheckInterval = TimeSpan.FromSeconds(1),
            // Retries wait in the schedule; a short queue poll (tests) polls the schedule more often too.
            SchedulePollingInterval = TimeSpan.FromSeconds(Math.Clamp(_options.QueuePollInterval.TotalSeconds * 5, 1, 5)),
            // On stop, a running job's token fires at once (StopTimeout 0): training saves its state and the job goes
            // back to the queue; it gets this long to do so before Hangfire gives up on it.
            StopTimeout = TimeSpan.Zero,
            ShutdownTimeout = TimeSpan.FromSeconds(60),
            FilterProvider = _filters,
            Activator = new RunnerActivator(this),
        }, _storage, []);
        return Task.CompletedTask;
    }

    /// <summary>
    /// After a crash, Hangfire would hand a job that was running back to a worker only after its invisibility timeout
    /// (30 minutes). This server owns the data folder, so a job still marked running is orphaned: queue it again now.
    /// A graceful stop needs nothing: the worker puts its job back itself.
    /// </summary>
    private void RecoverInterruptedJobs()
    {
        using var connection = _storage!.GetConnection();
        // A record written just before a crash, before the engine took the job: it never ran and never will.
        foreach (var record in _store.All().Where(r => !JobStates.IsFinal(r.State) && r.EngineId is null))
        {
            _store.Update(record.Id, r => r with { State = JobStates.Failed, Finished = DateTimeOffset.UtcNow, Error = "the server stopped before this job was queued; start it again" });
            _store.Append(record.Id, "state", JobStates.Failed);
        }
        foreach (var record in _store.All().Where(r => !JobStates.IsFinal(r.State) && r.EngineId is not null))
        {
            var state = connection.GetStateData(record.EngineId!)?.Name;
            if (state == ProcessingState.StateName)
            {
                _store.Append(record.Id, "log", "the server stopped while this job ran: it is queued again and picks up where it was saved");
                _client!.ChangeState(record.EngineId!, new EnqueuedState(record.Queue), ProcessingState.StateName);
            }
        }
    }

    /// <summary>Queues a job of <paramref name="type"/>; returns its record.</summary>
    public JobRecord Enqueue(string type, string title, object args, string? run = null)
    {
        if (!_handlers.ContainsKey(type)) throw new ArgumentException($"no job type {type}");
        var record = new JobRecord
        {
            Id = JobStore.NewId(), Type = type, Title = title, Args = JsonSerializer.SerializeToElement(args, JobJson.Options),
            Queue = Queue, Created = DateTimeOffset.UtcNow, Run = run,
        };
        record = record with { Queue = QueueFor(record.Args) };
        _store.Create(record);
        _store.Append(record.Id, "state", JobStates.Queued);
        string engineId;
        try { engineId = WithDatabase(() => Client.Create(Job.FromExpression<JobRunner>(r => r.Run(record.Id, CancellationToken.None)), new EnqueuedState(record.Queue))); }
        catch (DbException e)
        {
            var message = $"the job database is unavailable ({JobRunner.OneLine(e)}): try again in a moment";
            _store.Update(record.Id, r => r with { State = JobStates.Failed, Finished = DateTimeOffset.UtcNow, Error = message });
            _store.Append(record.Id, "state", JobStates.Failed);
            throw new ApiException(503, message);
        }
        return _store.Update(record.Id, r => r with { EngineId = engineId });
    }

    /// <summary>Stops a job: a queued one never starts, a running one is told at once (training saves its state first).</summary>
    public JobRecord Cancel(string id)
    {
        var record = _store.Get(id) ?? throw new ApiException(404, $"job '{id}' not found");
        if (JobStates.IsFinal(State(record))) throw new ApiException(409, $"job {id} has already {State(record)}");
        record = _store.Update(id, r => r with { CancelRequested = true });
        if (_running.TryGetValue(id, out var cts)) cts.Cancel();
        // Running in another process: deleting it in the engine fires that worker's token; the worker ends the record.
        else if (_options.SharedJobs && record.State == JobStates.Running) { }
        else
        {
            // Not started: it is removed from the queue and ends here.
            record = _store.Update(id, r => r with { State = JobStates.Cancelled, Finished = DateTimeOffset.UtcNow });
            _store.Append(id, "state", JobStates.Cancelled);
        }
        if (record.EngineId is { } engineId) WithDatabase(() => Client.Delete(engineId));
        return record;
    }

    /// <summary>What a job shows: the record's final state, else the engine's (queued or running).</summary>
    public string State(JobRecord record)
    {
        // A running job's runner writes its final state (and result) itself: until then it is running, even when
        // Hangfire already shows the job deleted (cancel) while it saves its state.
        if (JobStates.IsFinal(record.State) || record.State == JobStates.Running || record.EngineId is null || _storage is null) return record.State;
        string? name;
        try
        {
            using var connection = _storage.GetConnection();
            name = connection.GetStateData(record.EngineId)?.Name;
        }
        catch (DbException) { return record.State; } // the database is away for a moment: the record's view
        if (name == ProcessingState.StateName) return JobStates.Running;
        if (name == SucceededState.StateName) return JobStates.Succeeded;
        // A failure the runner recorded (Error set, record not final) is one attempt of a retry still to come; only a
        // failure outside the runner (the job could not even start) ends the job here.
        if (name == FailedState.StateName) return record.Error is null ? JobStates.Failed : JobStates.Queued;
        if (name == DeletedState.StateName) return JobStates.Cancelled;
        return record.State == JobStates.Running ? JobStates.Running : JobStates.Queued;
    }

    /// <summary>
    /// The queue a job goes to: <c>KIND-MODEL</c> (e.g. <c>cuda-sd15-base</c>) when a live worker serves that model's
    /// queue, else the device kind. A worker started with <c>--queues cuda-sd15-base</c> takes only that model's jobs.
    /// </summary>
    private string QueueFor(JsonElement args)
    {
        if (!_options.SharedJobs || args.ValueKind != JsonValueKind.Object || !args.TryGetProperty("model", out var m) || m.GetString() is not { Length: > 0 } model)
            return Queue;
        var modelQueue = ModelQueue(Queue, model);
        // Only live workers count: a killed one stays listed until the engine's watchdog removes it.
        return Workers().Any(w => w.Queues.Contains(modelQueue)) ? modelQueue : Queue;
    }

    /// <summary>The live processes taking jobs from this queue, with their queues (the engine's server list).</summary>
    public IReadOnlyList<WorkerInfo> Workers()
    {
        if (_storage is null) return [];
        var alive = DateTime.UtcNow - _options.TakeoverAfter * 2;
        return WithDatabase(() => _storage.GetMonitoringApi().Servers())
            .Where(s => (s.Heartbeat ?? s.StartedAt) > alive)
            // Hangfire names a server "NAME:PID:GUID"; NAME is our WorkerName.
            .Select(s => new WorkerInfo(s.Name.Split(':')[0], s.Queues.ToList(), new DateTimeOffset(DateTime.SpecifyKind(s.StartedAt, DateTimeKind.Utc)),
                s.Heartbeat is { } h ? new DateTimeOffset(DateTime.SpecifyKind(h, DateTimeKind.Utc)) : null))
            .OrderBy(w => w.Name, StringComparer.Ordinal).ToList();
    }

    /// <summary>
    /// Runs a short database call, again after a moment when the connection broke (PostgreSQL restarted: the first use
    /// of each pooled connection fails once) or the server is briefly away.
    /// </summary>
    private static T WithDatabase<T>(Func<T> call)
    {
        for (int attempt = 1; ; attempt++)
        {
            try { return call(); }
            catch (DbException) when (attempt < 4) { Thread.Sleep(250 * attempt * attempt); }
        }
    }

    /// <summary>The queue name of a model on a device kind: lowercase letters and digits, the rest as '-'.</summary>
    public static string ModelQueue(string kind, string model)
    {
        var slug = new string(model.ToLowerInvariant().Select(c => c is >= 'a' and <= 'z' or >= '0' and <= '9' ? c : '-').ToArray());
        while (slug.Contains("--")) slug = slug.Replace("--", "-");
        return kind + "-" + slug.Trim('-');
    }

    /// <summary>
    /// With shared storage: leases on the job's folder and (training) its run folder, taken under the engine's
    /// distributed lock; waits while another live worker holds one (the engine handed the job out again while that
    /// worker still ran it). Null on one machine, where the data folder lock already excludes a second server.
    /// </summary>
    internal IReadOnlyList<FileLease>? TakeLeases(JobRecord record, CancellationToken ct)
    {
        if (!_options.SharedJobs) return null;
        var folders = new List<string> { _store.Folder(record.Id) };
        if (record.Run is { } run) folders.Add(Path.Combine(_folders.Runs, DataFolders.CheckNewName(run, "run")));
        bool logged = false;
        while (true)
        {
            var taken = new List<FileLease>();
            string? heldBy = null;
            using (var connection = _storage!.GetConnection())
            using (WithDatabase(() => connection.AcquireDistributedLock("sdlora:leases", TimeSpan.FromSeconds(30))))
            {
                foreach (var folder in folders)
                {
                    var lease = FileLease.TryAcquire(folder, WorkerName, record.Id, _options.TakeoverAfter);
                    if (lease is null) { heldBy = FileLease.Holder(folder) ?? "another worker"; break; }
                    taken.Add(lease);
                }
            }
            if (heldBy is null) return taken;
            foreach (var l in taken) l.Dispose();
            if (!logged) _store.Append(record.Id, "log", $"{heldBy} still holds this job's folder: waiting for it to finish or its lease to expire");
            logged = true;
            ct.WaitHandle.WaitOne(TimeSpan.FromSeconds(1));
            ct.ThrowIfCancellationRequested();
        }
    }

    /// <summary>Waits until the job has ended and returns its record.</summary>
    public async Task<JobRecord> WaitAsync(string id, CancellationToken ct)
    {
        while (true)
        {
            var record = _store.Get(id) ?? throw new ApiException(404, $"job '{id}' not found");
            if (JobStates.IsFinal(record.State)) return record;
            await _store.WaitForChange(id, TimeSpan.FromSeconds(1), ct);
        }
    }

    /// <summary>The job running now on this server, if any.</summary>
    public IReadOnlyCollection<string> RunningJobs => _running.Keys.ToList();

    private BackgroundJobClient Client => _client ?? throw new InvalidOperationException("the job engine has not started");

    internal IJobHandler Handler(string type) =>
        _handlers.TryGetValue(type, out var h) ? h : throw new SdLoraException($"unknown job type '{type}'");

    internal CancellationTokenSource Register(string id) => _running[id] = new CancellationTokenSource();

    internal void Unregister(string id)
    {
        if (_running.TryRemove(id, out var cts)) cts.Dispose();
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_server is not null)
        {
            _server.SendStop();
            await _server.WaitForShutdownAsync(cancellationToken);
        }
        Dispose();
    }

    public void Dispose()
    {
        _server?.Dispose();
        _server = null;
        (_storage as IDisposable)?.Dispose();
        _storage = null;
        _dataLock?.Dispose();
        _dataLock = null;
    }

    private sealed class RunnerActivator(JobEngine engine) : JobActivator
    {
        public override object ActivateJob(Type jobType) =>
            jobType == typeof(JobRunner) ? new JobRunner(engine, engine._store) : base.ActivateJob(jobType);
    }

    /// <summary>
    /// A retried job goes back to its own queue (device kind or model), not Hangfire's "default" one, which no worker of
    /// ours serves: the queue is in our record.
    /// </summary>
    private sealed class KeepQueueFilter(JobStore store) : JobFilterAttribute, IElectStateFilter
    {
        public void OnStateElection(ElectStateContext context)
        {
            if (context.CandidateState is EnqueuedState enqueued && context.BackgroundJob?.Job?.Args is [string id, ..]
                && store.Get(id)?.Queue is { } queue && enqueued.Queue != queue)
                enqueued.Queue = queue;
        }
    }

    /// <summary>Keeps finished jobs in Hangfire's storage for a year (the default is a day); our records keep them for good.</summary>
    private sealed class KeepHistoryFilter : JobFilterAttribute, IApplyStateFilter
    {
        public void OnStateApplied(ApplyStateContext context, IWriteOnlyTransaction transaction) => context.JobExpirationTimeout = TimeSpan.FromDays(365);
        public void OnStateUnapplied(ApplyStateContext context, IWriteOnlyTransaction transaction) { }
    }
}
