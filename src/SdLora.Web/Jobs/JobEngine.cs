using System.Collections.Concurrent;
using System.Text.Json;
using Hangfire;
using Hangfire.Common;
using Hangfire.States;
using Hangfire.Storage;
using Hangfire.Storage.SQLite;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace SdLora.Web.Jobs;

/// <summary>
/// The job queue, on Hangfire: its SQLite storage (<c>DATA/jobs.db</c>) holds the queue and job states durably, and one
/// Hangfire worker per device runs one job at a time on its own thread. Our part: job records and event logs
/// (<see cref="JobStore"/>), the job types (<see cref="IJobHandler"/>), and cancellation that reaches a running job at
/// once. Everything is built on instances (no Hangfire globals), so several servers can live in one process (tests).
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
    private SQLiteStorage? _storage;
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
        // A job that throws fails with its message; it is not retried (a bad setting fails the same way again).
        _filters.Add(new AutomaticRetryAttribute { Attempts = 0, LogEvents = false });
        _filters.Add(new KeepHistoryFilter());
    }

    /// <summary>The Hangfire queue of this server's device ("cpu", "cuda", ...).</summary>
    public string Queue => _options.Device.Split(':')[0].Trim().ToLowerInvariant();
    public JobStore Store => _store;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        // One server per data folder: the lock makes "every job marked running is orphaned" true at start.
        var lockPath = Path.Combine(_folders.Root, ".serve.lock");
        try { _dataLock = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
        catch (IOException)
        {
            throw new SdLoraException($"{_folders.Root} is in use by another sdlora serve: stop it, or pass another --data folder");
        }
        _storage = new SQLiteStorage(_folders.JobDatabase, new SQLiteStorageOptions { QueuePollInterval = _options.QueuePollInterval });
        _client = new BackgroundJobClient(_storage, _filters);
        RecoverInterruptedJobs();
        _server = new BackgroundJobServer(new BackgroundJobServerOptions
        {
            WorkerCount = 1,
            Queues = [Queue],
            ServerName = $"sdlora-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..6]}",
            CancellationCheckInterval = TimeSpan.FromSeconds(1),
            SchedulePollingInterval = TimeSpan.FromSeconds(5),
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
        _store.Create(record);
        _store.Append(record.Id, "state", JobStates.Queued);
        var engineId = Client.Create(Job.FromExpression<JobRunner>(r => r.Run(record.Id, CancellationToken.None)), new EnqueuedState(Queue));
        return _store.Update(record.Id, r => r with { EngineId = engineId });
    }

    /// <summary>Stops a job: a queued one never starts, a running one is told at once (training saves its state first).</summary>
    public JobRecord Cancel(string id)
    {
        var record = _store.Get(id) ?? throw new ApiException(404, $"job '{id}' not found");
        if (JobStates.IsFinal(State(record))) throw new ApiException(409, $"job {id} has already {State(record)}");
        record = _store.Update(id, r => r with { CancelRequested = true });
        if (_running.TryGetValue(id, out var cts)) cts.Cancel();
        else
        {
            // Not started: it is removed from the queue and ends here.
            record = _store.Update(id, r => r with { State = JobStates.Cancelled, Finished = DateTimeOffset.UtcNow });
            _store.Append(id, "state", JobStates.Cancelled);
        }
        if (record.EngineId is { } engineId) Client.Delete(engineId);
        return record;
    }

    /// <summary>What a job shows: the record's final state, else the engine's (queued or running).</summary>
    public string State(JobRecord record)
    {
        // A running job's runner writes its final state (and result) itself: until then it is running, even when
        // Hangfire already shows the job deleted (cancel) while it saves its state.
        if (JobStates.IsFinal(record.State) || record.State == JobStates.Running || record.EngineId is null || _storage is null) return record.State;
        using var connection = _storage.GetConnection();
        var name = connection.GetStateData(record.EngineId)?.Name;
        if (name == ProcessingState.StateName) return JobStates.Running;
        if (name == SucceededState.StateName) return JobStates.Succeeded;
        if (name == FailedState.StateName) return JobStates.Failed;
        if (name == DeletedState.StateName) return JobStates.Cancelled;
        return record.State == JobStates.Running ? JobStates.Running : JobStates.Queued;
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
        _storage?.Dispose();
        _storage = null;
        _dataLock?.Dispose();
        _dataLock = null;
    }

    private sealed class RunnerActivator(JobEngine engine) : JobActivator
    {
        public override object ActivateJob(Type jobType) =>
            jobType == typeof(JobRunner) ? new JobRunner(engine, engine._store) : base.ActivateJob(jobType);
    }

    /// <summary>Keeps finished jobs in Hangfire's storage for a year (the default is a day); our records keep them for good.</summary>
    private sealed class KeepHistoryFilter : JobFilterAttribute, IApplyStateFilter
    {
        public void OnStateApplied(ApplyStateContext context, IWriteOnlyTransaction transaction) => context.JobExpirationTimeout = TimeSpan.FromDays(365);
        public void OnStateUnapplied(ApplyStateContext context, IWriteOnlyTransaction transaction) { }
    }
}
