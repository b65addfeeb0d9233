using System.Diagnostics;
using System.Text.Json;

namespace SdLora.Web.Jobs;

/// <summary>A kind of job: parses and checks its arguments when queued, and runs on a job worker thread.</summary>
public interface IJobHandler
{
    string Type { get; }
    /// <summary>Runs the job. Returns the result to record (files it made etc.). Stop early when <see cref="JobContext.Token"/> fires.</summary>
    object? Run(JobContext context);
}

/// <summary>What a running job gets: its record, a cancellation token, a log and a progress sink.</summary>
public sealed class JobContext(JobRecord record, JobStore store, CancellationToken token, bool resumedAfterRestart)
{
    private readonly Stopwatch _sinceProgress = Stopwatch.StartNew();
    private JobProgress? _pending;
    private string? _lastPhase;

    public JobRecord Record { get; } = record;
    public CancellationToken Token { get; } = token;
    /// <summary>True when an earlier attempt of this job was cut off (server stopped or crashed) and this one picks it up.</summary>
    public bool ResumedAfterRestart { get; } = resumedAfterRestart;
    public JobProgress? LastProgress { get; private set; }

    public T Args<T>() => Record.Args.Deserialize<T>(JobJson.Options) ?? throw new ApiException(400, $"job {Record.Id}: no arguments");

    public void Log(string message) => store.Append(Record.Id, "log", message);

    /// <summary>Records files this job made (absolute paths under the data root) in its record.</summary>
    public void Owns(IEnumerable<string> paths)
    {
        var relative = paths.Select(p => Path.GetRelativePath(store.Root, Path.GetFullPath(p)).Replace('\\', '/')).ToList();
        store.Update(Record.Id, r => r with { Files = r.Files.Union(relative, StringComparer.Ordinal).ToList() });
    }

    /// <summary>
    /// Records progress. Reports come as often as every step; the log keeps at most about four a second (plus every
    /// change of phase and the last of a phase), which is what a page can show anyway.
    /// </summary>
    public void Progress(JobProgress progress)
    {
        LastProgress = progress;
        bool phaseChanged = progress.Phase != _lastPhase;
        if (phaseChanged || progress.Done >= progress.Total || _sinceProgress.ElapsedMilliseconds >= 250)
        {
            if (phaseChanged && _pending is not null) store.Append(Record.Id, "progress", progress: _pending);
            store.Append(Record.Id, "progress", progress: progress);
            _pending = null;
            _lastPhase = progress.Phase;
            _sinceProgress.Restart();
        }
        else _pending = progress;
    }

    /// <summary>Writes a held-back progress record (called when the job ends).</summary>
    public void FlushProgress()
    {
        if (_pending is not null) store.Append(Record.Id, "progress", progress: _pending);
        _pending = null;
    }
}
