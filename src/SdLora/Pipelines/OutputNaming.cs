using System.Globalization;
using System.Text.RegularExpressions;

namespace SdLora.Pipelines;

/// <summary>
/// A1111-style output names, <c>00012-&lt;seed&gt;.png</c>: numbered after the highest existing number, never overwriting.
/// Numbers are unique even when several writers (threads, jobs, processes on this machine) save into one folder at
/// once: the next number is taken while holding an exclusive lock on a file named after the folder (in the temp
/// folder, so the output folder holds only images), and claimed by creating the image file.
/// </summary>
public static class OutputNaming
{
    private static readonly Regex Numbered = new(@"^(\d{5,})-", RegexOptions.Compiled);

    public static int NextNumber(string directory)
    {
        if (!Directory.Exists(directory)) return 0;
        int max = -1;
        foreach (var f in Directory.EnumerateFiles(directory))
        {
            var m = Numbered.Match(Path.GetFileName(f));
            if (m.Success && int.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int n)) max = Math.Max(max, n);
        }
        return max + 1;
    }

    /// <summary>
    /// Claims the next number: creates an empty <c>NNNNN-seed.ext</c> (the caller then writes over it, e.g. with an
    /// atomic rename) and returns its path. Two calls never get the same number, in one process or several.
    /// </summary>
    public static string Reserve(string directory, long seed, string extension = ".png", CancellationToken ct = default)
    {
        Directory.CreateDirectory(directory);
        using var numberingLock = AcquireLock(directory, ct);
        for (int n = NextNumber(directory); ; n++)
        {
            var path = Path.Combine(directory, $"{n:D5}-{seed}{extension}");
            try
            {
                using (new FileStream(path, FileMode.CreateNew, FileAccess.Write)) { }
                return path;
            }
            catch (IOException) when (File.Exists(path)) { /* taken meanwhile by a writer that ignores the lock: try the next */ }
        }
    }

    // FileShare.None is an exclusive advisory lock (flock on Unix, a share mode on Windows): it excludes other
    // handles in this process and in other processes alike.
    private static FileStream AcquireLock(string directory, CancellationToken ct)
    {
        var key = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(Path.GetFullPath(directory))))[..16];
        var lockPath = Path.Combine(Path.GetTempPath(), $"sdlora-numbering-{key}.lock");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        for (int attempt = 0; ; attempt++)
        {
            ct.ThrowIfCancellationRequested();
            try
            {
                return new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(Math.Min(50, 1 + attempt));
            }
            catch (IOException e)
            {
                throw new SdLoraException($"{directory}: could not take its numbering lock ({lockPath}) within 30 s ({e.Message}); is another program holding it?");
            }
        }
    }
}
