using System.Diagnostics;

namespace SdLora;

/// <summary>
/// Wall time spent in one phase of a job (<see cref="Count"/> times, e.g. once per batch), and the process's resident
/// memory when it last ended and its peak so far (bytes; 0 where /proc is not available).
/// </summary>
public sealed record PhaseTime(string Phase, double Seconds, int Count = 1, long ResidentBytesAfter = 0, long PeakResidentBytes = 0);

/// <summary>
/// Adds up the wall time of a job's phases in the order they first ran (text encoding, sampling, VAE decode, ...), so
/// a run can report where its time went. Not thread-safe: one job, one timer.
/// </summary>
public sealed class PhaseTimer
{
    private readonly List<PhaseTime> _phases = [];

    public IReadOnlyList<PhaseTime> Phases => _phases;

    public double TotalSeconds => _phases.Sum(p => p.Seconds);

    /// <summary>Adds <paramref name="seconds"/> to <paramref name="phase"/> (a phase seen before accumulates and counts one more).</summary>
    public void Add(string phase, double seconds)
    {
        int i = _phases.FindIndex(p => p.Phase == phase);
        long rss = ProcessMemoryInfo.ResidentBytes(), peak = ProcessMemoryInfo.PeakResidentBytes();
        if (i < 0) _phases.Add(new PhaseTime(phase, seconds, 1, rss, peak));
        else _phases[i] = _phases[i] with { Seconds = _phases[i].Seconds + seconds, Count = _phases[i].Count + 1, ResidentBytesAfter = rss, PeakResidentBytes = peak };
    }

    /// <summary>Runs <paramref name="work"/> and adds its wall time to <paramref name="phase"/>, also when it throws.</summary>
    public T Time<T>(string phase, Func<T> work)
    {
        var clock = Stopwatch.StartNew();
        try { return work(); }
        finally { Add(phase, clock.Elapsed.TotalSeconds); }
    }

    public void Time(string phase, Action work) => Time(phase, () => { work(); return 0; });
}

/// <summary>This process's resident memory from /proc/self/status (Linux); 0 elsewhere.</summary>
public static class ProcessMemoryInfo
{
    /// <summary>VmRSS in bytes.</summary>
    public static long ResidentBytes() => Read("VmRSS:");

    /// <summary>VmHWM (the peak resident set since start or the last reset) in bytes.</summary>
    public static long PeakResidentBytes() => Read("VmHWM:");

    private static long Read(string field)
    {
        try
        {
            if (!OperatingSystem.IsLinux()) return 0;
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(field, StringComparison.Ordinal))
                    return long.Parse(line[field.Length..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        catch (FormatException) { }
        return 0;
    }
}

/// <summary>
/// Returns freed heap memory to the OS between the phases of a job (glibc's <c>malloc_trim</c>): libtorch frees a
/// sampling loop's activations into malloc's arenas, where they stay resident, so the VAE decode that follows would
/// otherwise stack its own peak on top of them. Changes nothing but the resident set; a no-op off glibc.
/// </summary>
public static partial class HeapTrim
{
    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    public static void ReleaseFreedMemory()
    {
        if (!OperatingSystem.IsLinux()) return;
        try { MallocTrim(0); }
        catch (DllNotFoundException) { }
        catch (EntryPointNotFoundException) { }
    }
}
