using System.Text.Json;

namespace SdLora.Web.Jobs;

/// <summary>
/// What Hangfire runs: one job record, on the worker's own thread (TorchSharp dispose scopes are per thread). The job
/// ends in one of three ways: succeeded (with a result), cancelled by the user (its handler saved what it had), or
/// failed with its one-line message. When the server stops mid-job the method throws
/// <see cref="OperationCanceledException"/>, which tells Hangfire to hand the job to the next worker that starts.
/// </summary>
public sealed class JobRunner(JobEngine engine, JobStore store)
{
    // Hangfire passes its own token here: cancelled when the server stops or the job is deleted.
    public void Run(string jobId, CancellationToken serverToken)
    {
        var record = store.Get(jobId);
        if (record is null || record.CancelRequested || JobStates.IsFinal(record.State)) return;
        var handler = engine.Handler(record.Type);
        // Shared storage: the job's folders are ours alone while we run it (waits if a stalled holder is still alive).
        var leases = engine.TakeLeases(record, serverToken);
        try
        {
            // The previous holder may have finished or been told to stop while we waited.
            record = store.Get(jobId)!;
            if (record.CancelRequested || JobStates.IsFinal(record.State)) return;
            if (Counted(record) >= engine.MaxAttempts)
            {
                Finish(jobId, JobStates.Failed, null, $"gave up after {Counted(record)} attempts: {record.Error ?? "the worker running it stopped (killed, powered off or cut off)"}");
                return;
            }
            RunHeld(jobId, record, handler, serverToken, leases);
        }
        finally
        {
            foreach (var l in leases ?? []) l.Dispose();
        }
    }

    private void RunHeld(string jobId, JobRecord record, IJobHandler handler, CancellationToken serverToken, IReadOnlyList<FileLease>? leases)
    {
        using var userCancel = engine.Register(jobId);
        var tokens = new List<CancellationToken> { serverToken, userCancel.Token };
        tokens.AddRange((leases ?? []).Select(l => l.Lost));
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(tokens.ToArray());
        bool resumed = record.Attempts > 0;
        record = store.Update(jobId, r => r with { State = JobStates.Running, Started = r.Started ?? DateTimeOffset.UtcNow, Attempts = r.Attempts + 1, Worker = engine.WorkerName });
        store.Append(jobId, "state", JobStates.Running, null);
        store.Append(jobId, "log", $"attempt {record.Attempts} on {engine.WorkerName}");
        var context = new JobContext(record, store, linked.Token, resumed);
        bool LeaseLost() => leases?.Any(l => l.Lost.IsCancellationRequested) == true;
        bool ShutdownOnly() => serverToken.IsCancellationRequested && !userCancel.IsCancellationRequested && store.Get(jobId)?.CancelRequested != true;
        try
        {
            var result = handler.Run(context);
            context.FlushProgress();
            if (LeaseLost()) { store.Append(jobId, "log", $"{engine.WorkerName} lost its lease on this job to another worker: this copy stops without writing more"); return; }
            if (ShutdownOnly()) throw new OperationCanceledException(serverToken);
            bool cancelled = linked.IsCancellationRequested;
            Finish(jobId, cancelled ? JobStates.Cancelled : JobStates.Succeeded, result, null);
        }
        catch (OperationCanceledException) when (LeaseLost())
        {
            store.Append(jobId, "log", $"{engine.WorkerName} lost its lease on this job to another worker: this copy stops without writing more");
        }
        catch (OperationCanceledException) when (ShutdownOnly())
        {
            context.FlushProgress();
            // Not the job's fault: this start does not count against its attempts.
            store.Update(jobId, r => r with { State = JobStates.Queued, Handovers = r.Handovers + 1 });
            store.Append(jobId, "log", "server stopping: the job goes back to the queue and continues when the server runs again");
            throw;
        }
        catch (OperationCanceledException) when (linked.IsCancellationRequested)
        {
            context.FlushProgress();
            Finish(jobId, JobStates.Cancelled, null, null);
        }
        catch (Exception e)
        {
            context.FlushProgress();
            var message = OneLine(e);
            // A bad setting or input fails the same way again: at once. Anything else (a lost connection, a full disk)
            // is retried by the engine, a bounded number of times, with the last error shown meanwhile.
            bool userError = e is SdLoraException or ApiException or System.Text.Json.JsonException;
            if (!userError && Counted(record) < engine.MaxAttempts)
            {
                store.Update(jobId, r => r with { State = JobStates.Queued, Error = message });
                store.Append(jobId, "log", $"attempt {Counted(record)} of {engine.MaxAttempts} failed: {message}; it is retried");
                throw;
            }
            if (!userError) message = $"gave up after {Counted(record)} attempts: {message}";
            Finish(jobId, JobStates.Failed, null, message);
            throw new JobFailedException(message, e);
        }
        finally
        {
            engine.Unregister(jobId);
        }
    }

    /// <summary>The starts that count against the limit: all but orderly hand-overs.</summary>
    private static int Counted(JobRecord r) => r.Attempts - r.Handovers;

    private void Finish(string jobId, string state, object? result, string? error)
    {
        if (error is not null) store.Append(jobId, "log", "error: " + error);
        store.Update(jobId, r => r with
        {
            State = state, Finished = DateTimeOffset.UtcNow, Error = error,
            Result = result is null ? r.Result : JsonSerializer.SerializeToElement(result, result.GetType(), JobJson.Options),
        });
        store.Append(jobId, "state", state, null);
    }

    /// <summary>The message a user sees: ours are one line already; anything else gets its type and first line.</summary>
    public static string OneLine(Exception e)
    {
        var text = e is SdLoraException or ApiException ? e.Message : $"{e.GetType().Name}: {e.Message}";
        var line = text.ReplaceLineEndings(" ").Trim();
        return line.Length > 500 ? line[..500] + "..." : line;
    }
}

/// <summary>A job that failed; its message is the one line the user sees.</summary>
public sealed class JobFailedException(string message, Exception inner) : Exception(message, inner);
