using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;

namespace SdLora.Training;

/// <summary>Bounds on what a dataset .zip may unpack to; a zip past any of them is refused before writing.</summary>
public sealed record ZipLimits(int MaxEntries = 20_000, long MaxFileBytes = 256L << 20, long MaxTotalBytes = 8L << 30, double MaxCompressionRatio = 200)
{
    public static ZipLimits Default { get; } = new();
}

/// <summary>
/// Unpacks a dataset zip without trusting it: absolute paths, <c>..</c> segments, symlinks and device
/// entries are refused, and entry count, per-file size, total size and compression ratio are bounded
/// (checked on the declared sizes first, then again on the bytes actually inflated).
/// </summary>
public static class SafeZip
{
    /// <summary>
    /// Extracts <paramref name="zipPath"/> into a folder under <paramref name="cacheRoot"/> keyed by the zip's
    /// path, size and time, reusing an earlier complete extraction. Returns that folder.
    /// </summary>
    public static string ExtractCached(string zipPath, string cacheRoot, ZipLimits? limits = null)
    {
        var info = new FileInfo(zipPath);
        if (!info.Exists) throw new SdLoraException($"{zipPath}: zip file not found");
        var key = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes($"{info.FullName}|{info.Length}|{info.LastWriteTimeUtc.Ticks}")))[..16].ToLowerInvariant();
        var dest = Path.Combine(cacheRoot, Path.GetFileNameWithoutExtension(zipPath) + "-" + key);
        if (File.Exists(Path.Combine(dest, ".complete"))) return dest;
        var staging = dest + ".partial-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            Extract(zipPath, staging, limits);
            File.WriteAllText(Path.Combine(staging, ".complete"), "");
            if (Directory.Exists(dest)) Directory.Delete(dest, true);
            Directory.Move(staging, dest);
        }
        catch
        {
            try { if (Directory.Exists(staging)) Directory.Delete(staging, true); } catch (IOException) { }
            throw;
        }
        return dest;
    }

    /// <summary>Extracts every entry of <paramref name="zipPath"/> into <paramref name="destination"/> after checking all of them.</summary>
    public static void Extract(string zipPath, string destination, ZipLimits? limits = null)
    {
        limits ??= ZipLimits.Default;
        ZipArchive archive;
        try { archive = ZipFile.OpenRead(zipPath); }
        catch (InvalidDataException e) { throw new SdLoraException($"{zipPath}: not a readable zip file ({e.Message}); re-create it"); }
        using (archive)
        {
            var root = Path.GetFullPath(destination);
            var plan = Check(zipPath, archive, root, limits);
            Directory.CreateDirectory(root);
            long total = 0;
            foreach (var (entry, target) in plan)
            {
                if (target.EndsWith(Path.DirectorySeparatorChar)) { Directory.CreateDirectory(target); continue; }
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                using var input = entry.Open();
                using var output = new FileStream(target, FileMode.CreateNew, FileAccess.Write);
                // Declared sizes can lie: count the inflated bytes and stop at the limits.
                var buffer = new byte[1 << 16];
                long written = 0;
                int n;
                while ((n = input.Read(buffer)) > 0)
                {
                    written += n; total += n;
                    if (written > limits.MaxFileBytes || written > Math.Max(1, entry.CompressedLength) * limits.MaxCompressionRatio + (1 << 20))
                        throw new SdLoraException($"{zipPath}: entry '{entry.FullName}' inflates past the size limit ({limits.MaxFileBytes >> 20} MiB, ratio {limits.MaxCompressionRatio}); refusing a possible zip bomb");
                    if (total > limits.MaxTotalBytes)
                        throw new SdLoraException($"{zipPath}: contents exceed {limits.MaxTotalBytes >> 20} MiB in total; unzip it yourself and pass the folder");
                    output.Write(buffer, 0, n);
                }
            }
        }
    }

    private static List<(ZipArchiveEntry Entry, string Target)> Check(string zipPath, ZipArchive archive, string root, ZipLimits limits)
    {
        if (archive.Entries.Count > limits.MaxEntries)
            throw new SdLoraException($"{zipPath}: {archive.Entries.Count} entries, more than the {limits.MaxEntries} allowed; split the dataset");
        var plan = new List<(ZipArchiveEntry, string)>();
        long declared = 0;
        var rootWithSep = root.TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar;
        foreach (var e in archive.Entries)
        {
            var name = e.FullName.Replace('\\', '/');
            string Bad(string why) => $"{zipPath}: entry '{e.FullName}' {why}; refusing to unpack this zip";
            if (name.StartsWith('/') || (name.Length > 1 && name[1] == ':')) throw new SdLoraException(Bad("has an absolute path"));
            if (name.Split('/').Any(seg => seg == "..")) throw new SdLoraException(Bad("climbs out of the folder with '..'"));
            if (name.Contains('\0')) throw new SdLoraException(Bad("has a NUL in its name"));
            int unixType = (e.ExternalAttributes >> 16) & 0xF000;
            if (unixType == 0xA000) throw new SdLoraException(Bad("is a symbolic link"));
            if (unixType != 0 && unixType != 0x8000 && unixType != 0x4000) throw new SdLoraException(Bad("is not a regular file"));
            if (e.Length > limits.MaxFileBytes)
                throw new SdLoraException(Bad($"is {e.Length >> 20} MiB, over the {limits.MaxFileBytes >> 20} MiB per-file limit"));
            if (e.Length > 0 && e.Length > Math.Max(1, e.CompressedLength) * limits.MaxCompressionRatio && e.Length > (1 << 20))
                throw new SdLoraException(Bad($"compresses {e.Length / Math.Max(1, e.CompressedLength)}:1, past the {limits.MaxCompressionRatio}:1 limit (a zip bomb?)"));
            declared += e.Length;
            if (declared > limits.MaxTotalBytes)
                throw new SdLoraException($"{zipPath}: contents exceed {limits.MaxTotalBytes >> 20} MiB in total; unzip it yourself and pass the folder");
            // Skip the junk macOS adds; it would be listed as unreadable images otherwise.
            if (name.StartsWith("__MACOSX/") || Path.GetFileName(name).StartsWith("._")) continue;
            var target = Path.GetFullPath(Path.Combine(root, name));
            if (!target.StartsWith(rootWithSep, StringComparison.Ordinal)) throw new SdLoraException(Bad("points outside the folder"));
            if (name.EndsWith('/')) target = target.TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar;
            plan.Add((e, target));
        }
        return plan;
    }
}
