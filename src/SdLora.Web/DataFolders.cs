namespace SdLora.Web;

/// <summary>Where the server keeps things, and the one way a name from a request becomes a path.</summary>
public sealed class DataFolders
{
    public string Root { get; }
    public string Models { get; }
    public string Checkpoints => Path.Combine(Models, "checkpoints");
    public string Loras => Path.Combine(Models, "lora");
    public string Blip => Path.Combine(Models, "blip");
    public string Datasets => Path.Combine(Root, "datasets");
    public string Runs => Path.Combine(Root, "runs");
    public string Outputs => Path.Combine(Root, "outputs", "txt2img");
    public string Jobs => Path.Combine(Root, "jobs");
    public string Thumbnails => Path.Combine(Root, "cache", "thumbs");
    public string Temp => Path.Combine(Root, "tmp");
    public string JobDatabase => Path.Combine(Root, "jobs.db");
    public string OptionsFile => Path.Combine(Root, "options.json");

    public DataFolders(ServeOptions options)
    {
        Root = Path.GetFullPath(options.Data);
        Models = Path.GetFullPath(options.ModelsDir);
        foreach (var d in new[] { Root, Checkpoints, Loras, Datasets, Runs, Outputs, Jobs, Thumbnails, Temp }) Directory.CreateDirectory(d);
    }

    /// <summary>
    /// A plain name for something the server creates (dataset, run): letters, digits, space, <c>-_.</c>, at most 64
    /// characters, not starting with a dot.
    /// </summary>
    public static string CheckNewName(string? name, string what)
    {
        var n = name?.Trim() ?? "";
        if (n.Length is 0 or > 64 || n.StartsWith('.') || !n.All(c => char.IsLetterOrDigit(c) || c is ' ' or '-' or '_' or '.'))
            throw new ApiException(400, $"{what} name '{name}' is not usable: use 1-64 letters, digits, spaces, '-', '_' or '.', not starting with '.'");
        return n;
    }

    /// <summary>
    /// The path of <paramref name="relative"/> inside <paramref name="root"/>: no absolute paths, no <c>..</c>, no hidden
    /// segments, and no link that leads outside the folder. Throws a 400 (bad name) or 404 (nothing there, when
    /// <paramref name="mustExist"/>).
    /// </summary>
    public static string Inside(string root, string? relative, string what, bool mustExist = true)
    {
        var rel = (relative ?? "").Replace('\\', '/');
        var segments = rel.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (rel.Length == 0 || rel.Contains('\0') || rel.StartsWith('/') || Path.IsPathRooted(rel) || rel.Contains(':')
            || segments.Any(s => s is "." or ".." || s.StartsWith('.')))
            throw new ApiException(400, $"{what} '{relative}' is not a name inside the {Path.GetFileName(root)} folder");
        var rootFull = Path.GetFullPath(root).TrimEnd(Path.DirectorySeparatorChar);
        var path = Path.GetFullPath(Path.Combine(rootFull, Path.Combine(segments)));
        if (!path.StartsWith(rootFull + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ApiException(400, $"{what} '{relative}' is not a name inside the {Path.GetFileName(root)} folder");
        // Links inside the folder may not lead out of it.
        var current = rootFull;
        foreach (var s in segments)
        {
            current = Path.Combine(current, s);
            FileSystemInfo info = Directory.Exists(current) ? new DirectoryInfo(current) : new FileInfo(current);
            if (info.Exists && info.LinkTarget is not null)
            {
                var target = info.ResolveLinkTarget(true)?.FullName ?? current;
                if (!target.StartsWith(rootFull + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    throw new ApiException(400, $"{what} '{relative}' is a link that leads outside the {Path.GetFileName(root)} folder");
            }
        }
        if (mustExist && !File.Exists(path) && !Directory.Exists(path)) throw new ApiException(404, $"{what} '{relative}' not found");
        return path;
    }
}

/// <summary>A request the server refuses: the status code and a one-line reason (sent as <c>{"error": "..."}</c>).</summary>
public sealed class ApiException(int status, string message) : Exception(message)
{
    public int Status { get; } = status;
}
