namespace SdLora;

/// <summary>
/// An <see cref="IProgress{T}"/> that reports on the calling thread. <see cref="Progress{T}"/> posts reports to
/// the thread pool, which reorders them and lets them arrive after the work has finished.
/// </summary>
public sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
