namespace SdLora.IO;

/// <summary>Writes files so that a crash or Ctrl-C never leaves a half-written result: write a temp file beside the target, then rename.</summary>
public static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        var tmp = Path.Combine(dir, "." + Path.GetFileName(full) + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    public static void WriteAllText(string path, string text) =>
        Write(path, s => { using var w = new StreamWriter(s, leaveOpen: true); w.Write(text); });

    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes)
    {
        var copy = bytes.ToArray();
        Write(path, s => s.Write(copy));
    }

    /// <summary>
    /// Puts the finished folder <paramref name="fresh"/> at <paramref name="target"/>; an old folder there is set aside
    /// first, put back if the move fails, and deleted only once the new one is in place.
    /// </summary>
    public static void ReplaceFolder(string fresh, string target)
    {
        if (!Directory.Exists(target))
        {
            Directory.Move(fresh, target);
            return;
        }
        var old = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(target))!, "." + Path.GetFileName(target) + "." + Guid.NewGuid().ToString("N")[..8] + ".old");
        Directory.Move(target, old);
        try { Directory.Move(fresh, target); }
        catch
        {
            Directory.Move(old, target);
            throw;
        }
        try { Directory.Delete(old, recursive: true); } catch (IOException) { } // the new folder is in place; a leftover only costs space
    }
}
