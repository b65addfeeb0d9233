using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using SdLora.IO;

namespace SdLora.Web.Jobs;

/// <summary>
/// Job records and event logs as files: <c>jobs/ID/job.json</c> (rewritten atomically) and <c>jobs/ID/events.jsonl</c>
/// (appended). Readers waiting for new events are woken at once in this process; readers elsewhere poll the file.
/// </summary>
public sealed class JobStore(DataFolders folders)
{
    private sealed class EventLog
    {
        public readonly object Sync = new();
        public List<JobEvent>? Events;
        public long Bytes;
        public TaskCompletionSource Changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private readonly ConcurrentDictionary<string, EventLog> _logs = new();
    private readonly ConcurrentDictionary<string, object> _recordLocks = new();

    /// <summary>The data root; <see cref="JobRecord.Files"/> are relative to it.</summary>
    public string Root => folders.Root;

    public string Folder(string id) => DataFolders.Inside(folders.Jobs, id, "job", mustExist: false);

    public static string NewId() => $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Guid.NewGuid().ToString("N")[..6]}";

    public void Create(JobRecord record)
    {
        Directory.CreateDirectory(Folder(record.Id));
        Write(record);
    }

    public JobRecord? Get(string id)
    {
        string path;
        try { path = Path.Combine(Folder(id), "job.json"); }
        catch (ApiException) { return null; }
        if (!File.Exists(path)) return null;
        try { return JsonSerializer.Deserialize<JobRecord>(File.ReadAllText(path), JobJson.Options); }
        catch (JsonException) { return null; }
    }

    public JobRecord Update(string id, Func<JobRecord, JobRecord> change)
    {
        lock (_recordLocks.GetOrAdd(id, _ => new object()))
        {
            // Workers on other machines update the same record (progress, state) as the server (cancel): a lock file
            // makes read-change-write one step across processes too.
            using var across = LockFile(id);
            var updated = change(Get(id) ?? throw new ApiException(404, $"job '{id}' not found"));
            Write(updated);
            Touch(id);
            return updated;
        }
    }

    private FileStream LockFile(string id)
    {
        var path = Path.Combine(Folder(id), ".record.lock");
        for (int attempt = 0; ; attempt++)
        {
            try { return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) when (attempt < 200) { Thread.Sleep(10 + Random.Shared.Next(20)); }
        }
    }

    private void Write(JobRecord r) => AtomicFile.WriteAllText(Path.Combine(Folder(r.Id), "job.json"), JsonSerializer.Serialize(r, JobJson.Indented));

    /// <summary>Every job, newest first.</summary>
    public IReadOnlyList<JobRecord> All()
    {
        if (!Directory.Exists(folders.Jobs)) return [];
        return Directory.EnumerateDirectories(folders.Jobs).Select(d => Get(Path.GetFileName(d))).OfType<JobRecord>()
            .OrderByDescending(r => r.Created).ThenByDescending(r => r.Id, StringComparer.Ordinal).ToList();
    }

    public JobEvent Append(string id, string kind, string? message = null, JobProgress? progress = null)
    {
        var log = Log(id);
        JobEvent e;
        lock (log.Sync)
        {
            // Another process may have appended since: number after its events, not ours.
            using var across = LockFile(id);
            var file = new FileInfo(Path.Combine(Folder(id), "events.jsonl"));
            if (file.Exists && file.Length != log.Bytes) log.Events = null;
            var events = Load(id, log);
            e = new JobEvent(events.Count == 0 ? 1 : events[^1].Seq + 1, DateTimeOffset.UtcNow, kind, message, progress);
            events.Add(e);
            var bytes = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(e, JobJson.Options) + "\n");
            using (var fs = new FileStream(Path.Combine(Folder(id), "events.jsonl"), FileMode.Append, FileAccess.Write, FileShare.ReadWrite))
                fs.Write(bytes);
            log.Bytes += bytes.Length;
        }
        Touch(id);
        return e;
    }

    public IReadOnlyList<JobEvent> EventsAfter(string id, long after)
    {
        var log = Log(id);
        lock (log.Sync)
        {
            // Another process may have appended: re-read when the file is longer than what we hold.
            var file = new FileInfo(Path.Combine(Folder(id), "events.jsonl"));
            if (file.Exists && file.Length != log.Bytes) log.Events = null;
            return Load(id, log).Where(e => e.Seq > after).ToList();
        }
    }

    /// <summary>Completes when the job's record or events change, or after <paramref name="timeout"/>.</summary>
    public async Task WaitForChange(string id, TimeSpan timeout, CancellationToken ct)
    {
        var changed = Log(id).Changed.Task;
        await Task.WhenAny(changed, Task.Delay(timeout, ct));
        ct.ThrowIfCancellationRequested();
    }

    private void Touch(string id)
    {
        var log = Log(id);
        var old = Interlocked.Exchange(ref log.Changed, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        old.TrySetResult();
    }

    private EventLog Log(string id) => _logs.GetOrAdd(id, _ => new EventLog());

    private List<JobEvent> Load(string id, EventLog log)
    {
        if (log.Events is not null) return log.Events;
        var list = new List<JobEvent>();
        var path = Path.Combine(Folder(id), "events.jsonl");
        if (File.Exists(path))
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            log.Bytes = fs.Length;
            using var reader = new StreamReader(fs);
            while (reader.ReadLine() is { } line)
            {
                if (line.Length == 0) continue;
                try { if (JsonSerializer.Deserialize<JobEvent>(line, JobJson.Options) is { } e) list.Add(e); }
                catch (JsonException) { /* a line torn by a crash */ }
            }
        }
        else log.Bytes = 0;
        log.Events = list;
        return list;
    }
}
