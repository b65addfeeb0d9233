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
        using var userCancel = engine.Register(jobId);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(serverToken, userCancel.Token);
        bool resumed = record.Attempts > 0;
        record = store.Update(jobId, r => r with { State = JobStates.Running, Started = r.Started ?? DateTimeOffset.UtcNow, Attempts = r.Attempts + 1 });
        store.Append(jobId, "state", JobStates.Running);
        var context = new JobContext(record, store, linked.Token, resumed);
        bool ShutdownOnly() => serverToken.IsCancellationRequested && !userCancel.IsCancellationRequested && store.Get(jobId)?.CancelRequested != true;
        try
        {
            var result = handler.Run(context);
            context.FlushProgress();
            if (ShutdownOnly()) throw new OperationCanceledException(serverToken);
            bool cancelled = linked.IsCancellationRequested;
            Finish(jobId, cancelled ? JobStates.Cancelled : JobStates.Succeeded, result, null);
        }
        catch (OperationCanceledException) when (ShutdownOnly())
        {
            context.FlushProgress();
            store.Update(jobId, r => r with { State = JobStates.Queued });
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
            Finish(jobId, JobStates.Failed, null, message);
            // Hangfire records the failure too (no retries: see JobEngine).
            throw new JobFailedException(message, e);
        }
        finally
        {
            engine.Unregister(jobId);
        }
    }

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
