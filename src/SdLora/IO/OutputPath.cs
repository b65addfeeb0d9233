namespace SdLora.IO;

/// <summary>
/// The one rule every writer (CLI commands, training, the web server) applies to where it will write, before any
/// expensive work starts: never write over one of the inputs (the same file after resolving links), never replace an
/// existing output unless asked to, and find out now — not after an hour of work — that the location cannot be written
/// (the folder is created and a probe file written and deleted). The write itself then goes through <see cref="AtomicFile"/>
/// (temp file + rename), so a failure leaves any old file intact.
/// </summary>
public static class OutputPath
{
    /// <summary>
    /// Checks an output file. Refuses: a path that is a folder, one of <paramref name="inputs"/> (files or folders, compared
    /// after resolving symbolic links; a file inside an input folder counts too), and an existing file unless
    /// <paramref name="overwrite"/>. Creates the parent folder and proves it writable. Returns the full path.
    /// </summary>
    /// <param name="what">what the file is, for messages ("output", "merged model", ...)</param>
    public static string CheckFile(string path, bool overwrite, IEnumerable<string?>? inputs = null, string what = "output")
    {
        if (string.IsNullOrWhiteSpace(path)) throw new SdLoraException($"no {what} file given; name the file to write");
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new SdLoraException($"{path}: is a folder; the {what} is a file, so give a file name (e.g. {Path.Combine(path, "out.safetensors")})");
        RefuseInputs(path, full, inputs, what, replacesFolder: false);
        if (File.Exists(full) && !overwrite)
            throw new SdLoraException($"{path}: already exists; choose another {what} path, or set overwrite (--overwrite) to replace it");
        EnsureWritableFolder(Path.GetDirectoryName(full)!, what);
        return full;
    }

    /// <summary>
    /// Checks an output folder that the writer adds files to (generated images, a training run): refuses a path that is a
    /// file or one of <paramref name="inputs"/>; creates the folder and proves it writable. What the folder may already
    /// hold is the writer's own business. Returns the full path.
    /// </summary>
    public static string CheckFolder(string path, IEnumerable<string?>? inputs = null, string what = "output folder")
    {
        if (string.IsNullOrWhiteSpace(path)) throw new SdLoraException($"no {what} given; name the folder to write to");
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        if (File.Exists(full)) throw new SdLoraException($"{path}: is a file, but the {what} must be a folder; choose a folder name");
        RefuseInputs(path, full, inputs, what, replacesFolder: false);
        EnsureWritableFolder(full, what);
        return full;
    }

    /// <summary>
    /// Checks a folder the writer will replace as a whole (a merged diffusers model): like <see cref="CheckFolder"/>, and
    /// refuses an existing non-empty folder unless <paramref name="overwrite"/>, and any folder that holds an input or lies
    /// inside one. Only the parent folder is created. Returns the full path.
    /// </summary>
    public static string CheckReplacedFolder(string path, bool overwrite, IEnumerable<string?>? inputs = null, string what = "output folder")
    {
        if (string.IsNullOrWhiteSpace(path)) throw new SdLoraException($"no {what} given; name the folder to write");
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        if (File.Exists(full)) throw new SdLoraException($"{path}: is a file, but the {what} is a folder; choose a new folder name");
        RefuseInputs(path, full, inputs, what, replacesFolder: true);
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any() && !overwrite)
            throw new SdLoraException($"{path}: already exists and is not empty; choose another {what}, or set overwrite (--overwrite) to replace it");
        EnsureWritableFolder(Path.GetDirectoryName(full)!, what);
        return full;
    }

    /// <summary>True when both paths name the same file or folder once symbolic links are resolved.</summary>
    public static bool SameLocation(string a, string b) => string.Equals(ResolveLinks(a), ResolveLinks(b), PathComparison);

    /// <summary>True when <paramref name="path"/> is <paramref name="folder"/> or lies anywhere inside it (links resolved).</summary>
    public static bool IsInside(string path, string folder)
    {
        var p = ResolveLinks(path);
        var f = ResolveLinks(folder).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        return string.Equals(p, f, PathComparison) || p.StartsWith(f + Path.DirectorySeparatorChar, PathComparison);
    }

    /// <summary>
    /// The full path with every symbolic link along it resolved (like POSIX <c>realpath</c>); the part that does not
    /// exist yet is kept as written.
    /// </summary>
    public static string ResolveLinks(string path) => ResolveLinks(Path.GetFullPath(path), depth: 0);

    private static string ResolveLinks(string full, int depth)
    {
        if (depth > 40) throw new SdLoraException($"{full}: too many levels of symbolic links");
        var root = Path.GetPathRoot(full) ?? "";
        var parts = full[root.Length..].Split([Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar], StringSplitOptions.RemoveEmptyEntries);
        var current = root;
        for (int i = 0; i < parts.Length; i++)
        {
            var next = Path.Combine(current, parts[i]);
            var info = new FileInfo(next);
            if (info.LinkTarget is { } target)
            {
                // Relative targets are relative to the link's folder; the target may itself hold links.
                next = ResolveLinks(Path.GetFullPath(target, current), depth + 1);
            }
            else if (!info.Exists && !Directory.Exists(next))
            {
                return Path.Combine([next, .. parts[(i + 1)..]]);
            }
            current = next;
        }
        return current;
    }

    /// <summary>Creates <paramref name="folder"/> if needed and writes and deletes a small probe file in it.</summary>
    public static void EnsureWritableFolder(string folder, string what = "output folder")
    {
        var probe = Path.Combine(folder, ".sdlora-write-test-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            Directory.CreateDirectory(folder);
            using (var fs = new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose))
                fs.WriteByte(0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            throw new SdLoraException($"{folder}: cannot write the {what} there ({e.Message.TrimEnd('.')}); choose a folder you can write to", e);
        }
    }

    private static void RefuseInputs(string shown, string full, IEnumerable<string?>? inputs, string what, bool replacesFolder)
    {
        if (inputs is null) return;
        foreach (var input in inputs)
        {
            if (string.IsNullOrWhiteSpace(input)) continue;
            bool clash = SameLocation(full, input)
                         || (Directory.Exists(input) && IsInside(full, input) && !replacesFolder && File.Exists(full))
                         || (replacesFolder && (IsInside(input, full) || IsInside(full, input)));
            if (clash)
                throw new SdLoraException($"{shown}: is {(SameLocation(full, input) ? "" : "inside or holds ")}the input {input}; writing the {what} there would replace it, so choose another {what}");
        }
    }

    private static StringComparison PathComparison =>
        OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
}
