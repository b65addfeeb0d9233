using System.Text.Json;
using SdLora.IO;

namespace SdLora.Web.Jobs;

/// <summary>
/// A lease on a folder of the shared data root (a job's folder, a training run's folder): <c>lease.json</c> says who
/// holds it and until when. The holder renews it (heartbeat) every quarter of its length; another process may take it
/// only once it has expired, so two workers never write the same folder even if the engine handed a job out twice.
/// Taking a lease is serialized by the engine's distributed lock (see <see cref="JobEngine"/>); clocks of the nodes are
/// assumed to agree to well within the lease length (NTP).
/// </summary>
public sealed class FileLease : IDisposable
{
    public const string FileName = "lease.json";
    /// <summary>Held (an exclusive advisory lock) around every read-then-write of the lease, so a beat cannot write
    /// back a lease that another process took between the beat's read and its write.</summary>
    public const string LockFileName = "lease.json.lock";
    private sealed record Content(string Owner, string Job, DateTimeOffset Expires);

    private readonly string _path;
    private readonly string _owner, _job;
    private readonly TimeSpan _length;
    private readonly Timer _heartbeat;
    private readonly CancellationTokenSource _lost = new();
    private readonly object _sync = new();
    private bool _disposed;

    private FileLease(string path, string owner, string job, TimeSpan length)
    {
        _path = path; _owner = owner; _job = job; _length = length;
        _heartbeat = new Timer(_ => Renew(), null, length / 4, length / 4);
    }

    /// <summary>Fires when the lease was found taken by someone else (this process stalled past its expiry): stop writing.</summary>
    public CancellationToken Lost => _lost.Token;

    /// <summary>Who holds the lease on <paramref name="folder"/> now, or null when nobody does (no file, or expired).</summary>
    public static string? Holder(string folder)
    {
        var c = Read(Path.Combine(folder, FileName));
        return c is not null && c.Expires > DateTimeOffset.UtcNow ? c.Owner : null;
    }

    /// <summary>Takes the lease for <paramref name="owner"/> when it is free, expired or already ours; null when another live holder has it.</summary>
    public static FileLease? TryAcquire(string folder, string owner, string job, TimeSpan length)
    {
        Directory.CreateDirectory(folder);
        var path = Path.Combine(folder, FileName);
        using (LockFor(path, TimeSpan.FromSeconds(10)) ?? throw new IOException($"{Path.Combine(folder, LockFileName)}: still locked after 10 s"))
        {
            var current = Read(path);
            if (current is not null && current.Owner != owner && current.Expires > DateTimeOffset.UtcNow) return null;
            Write(path, new Content(owner, job, DateTimeOffset.UtcNow + length));
        }
        return new FileLease(path, owner, job, length);
    }

    /// <summary>
    /// The lock of the lease in <paramref name="folder"/>, which whoever writes its <see cref="FileName"/> holds meanwhile;
    /// null when another holder kept it for longer than <paramref name="wait"/>.
    /// </summary>
    public static FileStream? Lock(string folder, TimeSpan wait) => LockFor(Path.Combine(folder, FileName), wait);

    private static FileStream? LockFor(string leasePath, TimeSpan wait)
    {
        var lockPath = Path.Combine(Path.GetDirectoryName(leasePath)!, LockFileName);
        var deadline = DateTime.UtcNow + wait;
        while (true)
        {
            try { return new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) when (DateTime.UtcNow < deadline) { Thread.Sleep(10 + Random.Shared.Next(20)); }
            catch (IOException) { return null; }
        }
    }

    private void Renew()
    {
        lock (_sync)
        {
            if (_disposed) return;
            try
            {
                // Busy lock: skip this beat; the next comes well before expiry.
                using var held = LockFor(_path, _length / 8);
                if (held is null) return;
                var current = Read(_path);
                if (current is not null && current.Owner != _owner) { _lost.Cancel(); return; }
                Write(_path, new Content(_owner, _job, DateTimeOffset.UtcNow + _length));
            }
            // The shared folder hiccupped: the next beat tries again, well before expiry (a timer must never throw).
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }

    private static Content? Read(string path)
    {
        try { return File.Exists(path) ? JsonSerializer.Deserialize<Content>(File.ReadAllText(path), JobJson.Options) : null; }
        catch (Exception e) when (e is JsonException or IOException) { return null; }
    }

    private static void Write(string path, Content c) => AtomicFile.WriteAllText(path, JsonSerializer.Serialize(c, JobJson.Options));

    /// <summary>Ends the heartbeat and gives the lease up (deletes the file if it is still ours).</summary>
    public void Dispose()
    {
        lock (_sync)
        {
            if (_disposed) return;
            _disposed = true;
            _heartbeat.Dispose();
            try
            {
                using var held = LockFor(_path, TimeSpan.FromSeconds(2));
                if (held is not null && Read(_path)?.Owner == _owner) File.Delete(_path);
            }
            catch (IOException) { /* it expires by itself */ }
            _lost.Dispose();
        }
    }
}
