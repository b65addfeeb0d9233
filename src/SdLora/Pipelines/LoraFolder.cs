namespace SdLora.Pipelines;

/// <summary>A LoRA file found in a LoRA folder: its tag name (file name without extension) and where it lies.</summary>
public sealed record LoraFolderEntry(string Name, string Path, string RelativePath, long Size);

/// <summary>
/// The LoRA folder that <c>&lt;lora:NAME:W&gt;</c> tags name files in (A1111's <c>models/Lora</c>). A tag is a name,
/// never a path: it resolves only to a file inside the folder (or one of its sub-folders, as A1111 lists them), so a
/// prompt cannot make the program read files elsewhere. Links are followed only when they stay inside the folder.
/// </summary>
public static class LoraFolder
{
    public static readonly string[] Extensions = [".safetensors", ".pt", ".ckpt"];
    private const int MaxDepth = 8;

    /// <summary>The file a <c>&lt;lora:NAME&gt;</c> tag means: <c>NAME.safetensors</c> (or .pt/.ckpt) in the folder, else in a sub-folder.</summary>
    public static string Resolve(string name, string loraDir)
    {
        CheckName(name);
        var root = Root(loraDir);
        if (!Directory.Exists(root))
            throw new SdLoraException($"<lora:{name}> not found: the LoRA folder {root} does not exist; put {name}.safetensors there or pass --lora-dir");
        foreach (var ext in Extensions)
        {
            var direct = System.IO.Path.Combine(root, name + ext);
            if (File.Exists(direct)) return Inside(direct, root, name);
        }
        foreach (var entry in List(loraDir))
            if (entry.Name == name) return entry.Path;
        throw new SdLoraException($"<lora:{name}> not found: no {name}.safetensors in {root}; put the file there or pass --lora-dir");
    }

    /// <summary>Every LoRA file in the folder and its sub-folders, in a stable order (links leading out are skipped).</summary>
    public static IReadOnlyList<LoraFolderEntry> List(string loraDir)
    {
        var root = Root(loraDir);
        var found = new List<LoraFolderEntry>();
        if (!Directory.Exists(root)) return found;
        void Walk(string dir, int depth)
        {
            foreach (var f in Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal))
            {
                var fileName = System.IO.Path.GetFileName(f);
                if (fileName.StartsWith('.') || !Extensions.Contains(System.IO.Path.GetExtension(f).ToLowerInvariant())) continue;
                var info = new FileInfo(f);
                if (info.LinkTarget is not null && !IsInside(FinalTarget(info), root)) continue;
                found.Add(new LoraFolderEntry(System.IO.Path.GetFileNameWithoutExtension(f), f, System.IO.Path.GetRelativePath(root, f), info.Exists ? new FileInfo(FinalTarget(info)).Length : 0));
            }
            if (depth >= MaxDepth) return;
            foreach (var d in Directory.EnumerateDirectories(dir).Order(StringComparer.Ordinal))
                if (!System.IO.Path.GetFileName(d).StartsWith('.') && new DirectoryInfo(d).LinkTarget is null) Walk(d, depth + 1);
        }
        Walk(root, 0);
        return found;
    }

    /// <summary>Refuses anything but a plain name: no folders, no <c>..</c>, no absolute paths.</summary>
    public static void CheckName(string name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Contains('/') || name.Contains('\\') || name.Contains('\0') || name is "." or ".."
            || System.IO.Path.IsPathRooted(name) || name.Contains(':') && OperatingSystem.IsWindows())
            throw new SdLoraException($"<lora:{name}>: a LoRA tag takes a file name from the LoRA folder, not a path; put the file in the LoRA folder and write <lora:NAME:WEIGHT>");
    }

    private static string Root(string loraDir)
    {
        var full = System.IO.Path.GetFullPath(loraDir);
        var info = new DirectoryInfo(full);
        return info.Exists && info.LinkTarget is not null ? info.ResolveLinkTarget(true)?.FullName ?? full : full;
    }

    private static string Inside(string path, string root, string name)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is not null && !IsInside(FinalTarget(info), root))
            throw new SdLoraException($"<lora:{name}>: {path} is a link to a file outside the LoRA folder {root}; copy the file into the folder instead");
        return path;
    }

    private static string FinalTarget(FileInfo info) => info.ResolveLinkTarget(true)?.FullName ?? info.FullName;

    private static bool IsInside(string path, string root) =>
        System.IO.Path.GetFullPath(path).StartsWith(root.TrimEnd(System.IO.Path.DirectorySeparatorChar) + System.IO.Path.DirectorySeparatorChar, StringComparison.Ordinal);
}
