using System.Diagnostics;

namespace SdLora;

/// <summary>Wall time spent in one phase of a job (<see cref="Count"/> times, e.g. once per batch).</summary>
public sealed record PhaseTime(string Phase, double Seconds, int Count = 1);

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
        if (i < 0) _phases.Add(new PhaseTime(phase, seconds));
        else _phases[i] = _phases[i] with { Seconds = _phases[i].Seconds + seconds, Count = _phases[i].Count + 1 };
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
