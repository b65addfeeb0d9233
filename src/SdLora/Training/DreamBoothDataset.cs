using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using SdLora.Imaging;

namespace SdLora.Training;

/// <summary>
/// The images a DreamBooth run trains on: instance subsets and regularization (class) subsets, found on
/// disk in either layout, with captions resolved and unreadable files set aside. Build with <see cref="Load(DatasetOptions)"/>.
/// </summary>
public sealed partial class DreamBoothDataset
{
    public DatasetLayout Layout { get; }
    /// <summary>The folder the instance images were found in (the unpacked folder for a zip).</summary>
    public string Root { get; }
    public IReadOnlyList<DatasetSubset> Subsets { get; }
    public IReadOnlyList<UnreadableImage> Unreadable { get; }
    /// <summary>Things worth telling the user that are not errors (ignored folders, ...).</summary>
    public IReadOnlyList<string> Notes { get; }

    private DreamBoothDataset(DatasetLayout layout, string root, IReadOnlyList<DatasetSubset> subsets, IReadOnlyList<UnreadableImage> unreadable, IReadOnlyList<string> notes)
    {
        Layout = layout; Root = root; Subsets = subsets; Unreadable = unreadable; Notes = notes;
    }

    public IEnumerable<DatasetSubset> TrainSubsets => Subsets.Where(s => !s.IsRegularization);
    public IEnumerable<DatasetSubset> RegSubsets => Subsets.Where(s => s.IsRegularization);
    public IEnumerable<TrainingImage> Images => Subsets.SelectMany(s => s.Images);
    /// <summary>Instance images times their repeats (kohya's <c>num_train_images</c>).</summary>
    public int NumTrainImages => TrainSubsets.Sum(s => s.Images.Count * s.Repeats);
    /// <summary>Class images times their repeats (kohya's <c>num_reg_images</c>).</summary>
    public int NumRegImages => RegSubsets.Sum(s => s.Images.Count * s.Repeats);

    [GeneratedRegex(@"^(\d+)_(.+)$")]
    private static partial Regex KohyaFolderName();

    /// <summary>Parses <c>10_sks dog</c> into (10, "sks dog"); false for other names.</summary>
    public static bool TryParseKohyaFolder(string name, out int repeats, out string tokens)
    {
        var m = KohyaFolderName().Match(name);
        repeats = 0; tokens = "";
        if (!m.Success || !int.TryParse(m.Groups[1].Value, out repeats)) return false;
        tokens = m.Groups[2].Value.Trim();
        return true;
    }

    public static DreamBoothDataset Load(TrainingConfig config, string? zipCacheRoot = null) =>
        Load(DatasetOptions.FromConfig(config, zipCacheRoot));

    public static DreamBoothDataset Load(DatasetOptions o)
    {
        var unreadable = new List<UnreadableImage>();
        var notes = new List<string>();
        var root = Resolve(o.Data, "data", o);
        var (layout, subsets) = Discover(root, "data", o.InstancePrompt, o.NumRepeats, isReg: false, o.CaptionExtension, unreadable, notes);
        var all = new List<DatasetSubset>(subsets);
        if (all.All(s => s.Images.Count == 0))
            throw new SdLoraException(unreadable.Count == 0
                ? $"data {o.Data}: no usable images (jpg, png, webp or bmp) found"
                : $"data {o.Data}: no usable images; {unreadable.Count} file(s) could not be read: {ListUnreadable(unreadable)}");
        if (o.RegData is not null)
        {
            var regRoot = Resolve(o.RegData, "reg-data", o);
            var (_, reg) = Discover(regRoot, "reg-data", o.ClassPrompt, 1, isReg: true, o.CaptionExtension, unreadable, notes);
            if (reg.All(s => s.Images.Count == 0)) throw new SdLoraException($"reg-data {o.RegData}: no usable class images found");
            all.AddRange(reg);
        }
        if (o.ClassData is not null && Directory.Exists(o.ClassData) && ImageFiles(o.ClassData).Any())
        {
            if (o.ClassPrompt is null && o.RegData is null)
                notes.Add($"class-data {o.ClassData} ignored: set class-prompt to train with prior preservation");
            else if (o.ClassPrompt is not null)
            {
                var images = LoadImages(o.ClassData, o.ClassPrompt, o.CaptionExtension, isReg: true, "class_images", unreadable);
                if (images.Count > 0) all.Add(new DatasetSubset(o.ClassData, "class_images", 1, true, images));
            }
        }
        all.RemoveAll(s => s.Images.Count == 0);
        return new DreamBoothDataset(layout, root, all, unreadable, notes);
    }

    private static string Resolve(string path, string flag, DatasetOptions o)
    {
        if (File.Exists(path))
        {
            if (!path.EndsWith(".zip", StringComparison.OrdinalIgnoreCase))
                throw new SdLoraException($"{flag} {path} is a file: give the folder holding the images, or a .zip of it");
            var cache = o.ZipCacheRoot ?? Path.Combine(Path.GetTempPath(), "sdlora-zips");
            var dir = SafeZip.ExtractCached(path, cache, o.ZipLimits);
            return SingleWrapperFolder(dir);
        }
        if (!Directory.Exists(path)) throw new SdLoraException($"{flag} {path}: folder not found");
        return Path.GetFullPath(path);
    }

    // Zips made by "compress folder" hold that folder; step into it when it is the only thing there.
    private static string SingleWrapperFolder(string dir)
    {
        var entries = Directory.EnumerateFileSystemEntries(dir).Where(e => !Path.GetFileName(e).StartsWith('.')).ToList();
        if (entries.Count == 1 && Directory.Exists(entries[0]) && !TryParseKohyaFolder(Path.GetFileName(entries[0]), out _, out _))
            return entries[0];
        return dir;
    }

    private static (DatasetLayout, List<DatasetSubset>) Discover(string root, string flag, string? prompt, int plainRepeats, bool isReg,
        string captionExt, List<UnreadableImage> unreadable, List<string> notes)
    {
        var images = ImageFiles(root).ToList();
        var subdirs = SubDirectories(root).ToList();
        var kohyaDirs = subdirs.Where(d => TryParseKohyaFolder(Path.GetFileName(d), out _, out _)).ToList();
        var promptFlag = isReg ? "class-prompt" : "instance-prompt";
        string rootName = Path.GetFileName(root.TrimEnd(Path.DirectorySeparatorChar));

        if (images.Count > 0)
        {
            if (kohyaDirs.Count > 0)
                throw new SdLoraException($"{flag} {root} holds both images and kohya sub-folders ({Quote(kohyaDirs)}): move the loose images into a '<repeats>_<prompt>' folder, or point {flag} at a folder with only images");
            if (prompt is null && TryParseKohyaFolder(rootName, out int r, out string tokens))
                throw new SdLoraException($"{flag} {root} is one kohya subset folder ({r} repeats, prompt '{tokens}'): use its parent folder {Path.GetDirectoryName(root)} instead, or set {promptFlag} to use it as a plain folder of images");
            var loaded = LoadImages(root, prompt, captionExt, isReg, rootName, unreadable);
            if (prompt is null)
            {
                var missing = MissingCaptions(root, captionExt, images);
                if (missing.Count > 0)
                    throw new SdLoraException($"{flag} {root}: {missing.Count} image(s) have no caption file (e.g. {Path.GetFileName(missing[0])}): set {promptFlag} (e.g. \"a photo of sks dog\"), add same-name {captionExt} files, or use kohya folders named like '10_sks dog'");
            }
            return (DatasetLayout.PlainFolder, [new DatasetSubset(root, rootName, plainRepeats, isReg, loaded)]);
        }

        if (kohyaDirs.Count > 0)
        {
            if (prompt is not null && !isReg)
                throw new SdLoraException($"{flag} {root} is a kohya dataset root (sub-folders {Quote(kohyaDirs)}), but {promptFlag} asks for a plain folder of images: leave {promptFlag} unset (the folder names carry the prompt), or point {flag} at the folder that holds the photos");
            foreach (var other in subdirs.Except(kohyaDirs))
                notes.Add($"{flag}: folder '{Path.GetFileName(other)}' ignored: kohya folders are named <repeats>_<prompt>, e.g. 10_sks dog");
            var subsets = new List<DatasetSubset>();
            foreach (var dir in kohyaDirs.OrderBy(d => d, StringComparer.Ordinal))
            {
                var name = Path.GetFileName(dir);
                TryParseKohyaFolder(name, out int repeats, out string tokens);
                if (repeats < 1) throw new SdLoraException($"{flag}: folder '{name}' asks for {repeats} repeats: rename it with a count of 1 or more, e.g. 10_{tokens}");
                if (!ImageFiles(dir).Any() && SubDirectories(dir).Any(d => ImageFiles(d).Any()))
                    throw new SdLoraException($"{flag}: kohya folder '{name}' holds sub-folders of images, not images: move the images up into {dir}");
                subsets.Add(new DatasetSubset(dir, name, repeats, isReg, LoadImages(dir, tokens, captionExt, isReg, name, unreadable)));
            }
            return (DatasetLayout.Kohya, subsets);
        }

        // No images here and no kohya folders: find out whether the user pointed one level too high.
        var kohyaRoots = subdirs.Where(d => SubDirectories(d).Any(s => TryParseKohyaFolder(Path.GetFileName(s), out _, out _))).ToList();
        if (kohyaRoots.Count > 0)
            throw new SdLoraException($"{flag} {root} is one level above a kohya dataset: use {flag} {kohyaRoots[0]} (the folder whose sub-folders are named like '10_sks dog')");
        var imageDirs = subdirs.Where(d => ImageFiles(d).Any()).ToList();
        if (imageDirs.Count > 0)
            throw new SdLoraException($"{flag} {root} has no images itself, but its sub-folder(s) {Quote(imageDirs)} do: use {flag} {imageDirs[0]} with {promptFlag}, or rename the sub-folders kohya-style as <repeats>_<prompt> (e.g. '10_sks dog')");
        throw new SdLoraException($"{flag} {root}: no images found (jpg, png, webp or bmp)");
    }

    private static List<string> MissingCaptions(string dir, string captionExt, IEnumerable<string> images) =>
        images.Where(i => CaptionFile(i, captionExt) is null).ToList();

    private static List<TrainingImage> LoadImages(string dir, string? defaultCaption, string captionExt, bool isReg, string subsetName, List<UnreadableImage> unreadable)
    {
        var list = new List<TrainingImage>();
        foreach (var other in Directory.EnumerateFiles(dir).Where(f => OtherImageExtensions.Contains(Path.GetExtension(f).ToLowerInvariant())).Order(StringComparer.Ordinal))
            unreadable.Add(new UnreadableImage(other, $"{Path.GetExtension(other)} is not supported: convert it to jpg or png"));
        foreach (var path in ImageFiles(dir))
        {
            RgbImage img;
            try { img = RgbImage.Load(path, requireComplete: true); }
            catch (Exception e) when (e is SdLoraException or IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException)
            {
                unreadable.Add(new UnreadableImage(path, ReasonOf(e, path)));
                continue;
            }
            var captionFile = CaptionFile(path, captionExt);
            string? caption = captionFile is null ? null : ReadCaption(captionFile);
            list.Add(new TrainingImage(path, caption ?? defaultCaption ?? "", caption is not null, img.Width, img.Height, isReg, subsetName));
        }
        return list;
    }

    private static string ReasonOf(Exception e, string path)
    {
        var m = e.Message;
        return m.StartsWith(path + ": ", StringComparison.Ordinal) ? m[(path.Length + 2)..] : m;
    }

    /// <summary>The caption beside an image: <c>--caption-extension</c> first, then <c>.caption</c> and <c>.txt</c>.</summary>
    public static string? CaptionFile(string imagePath, string captionExt = ".txt")
    {
        var stem = Path.Combine(Path.GetDirectoryName(imagePath)!, Path.GetFileNameWithoutExtension(imagePath));
        foreach (var ext in new[] { captionExt, ".caption", ".txt" }.Distinct())
            if (File.Exists(stem + ext)) return stem + ext;
        return null;
    }

    private static string? ReadCaption(string file)
    {
        var line = File.ReadLines(file).Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0);
        return line;
    }

    private static readonly string[] OtherImageExtensions = [".gif", ".heic", ".heif", ".tif", ".tiff", ".avif", ".jxl"];

    internal static IEnumerable<string> ImageFiles(string dir) =>
        Directory.EnumerateFiles(dir).Where(f => RgbImage.HasImageExtension(f) && !Path.GetFileName(f).StartsWith('.')).Order(StringComparer.Ordinal);

    private static IEnumerable<string> SubDirectories(string dir) =>
        Directory.EnumerateDirectories(dir).Where(d => !Path.GetFileName(d).StartsWith('.') && Path.GetFileName(d) != "__MACOSX").Order(StringComparer.Ordinal);

    private static string Quote(IEnumerable<string> dirs)
    {
        var names = dirs.Select(d => "'" + Path.GetFileName(d) + "'").ToList();
        return string.Join(", ", names.Take(3)) + (names.Count > 3 ? $" and {names.Count - 3} more" : "");
    }

    private static string ListUnreadable(IReadOnlyList<UnreadableImage> u) =>
        string.Join("; ", u.Take(5).Select(x => $"{Path.GetFileName(x.Path)}: {x.Reason}")) + (u.Count > 5 ? $"; and {u.Count - 5} more" : "");

    /// <summary>kohya's <c>ss_tag_frequency</c>: {subset folder: {tag: count}}, tags being the comma-separated caption parts.</summary>
    public Dictionary<string, Dictionary<string, int>> TagFrequency()
    {
        var result = new Dictionary<string, Dictionary<string, int>>();
        foreach (var s in Subsets)
        {
            var counts = result.TryGetValue(s.Name, out var c) ? c : result[s.Name] = new Dictionary<string, int>();
            foreach (var img in s.Images)
                foreach (var tag in CaptionProcessor.SplitTags(img.Caption))
                    counts[tag] = counts.GetValueOrDefault(tag) + 1;
        }
        return result;
    }

    /// <summary>kohya's <c>ss_dataset_dirs</c> / <c>ss_reg_dataset_dirs</c> JSON: {folder: {n_repeats, img_count}}.</summary>
    public string DatasetDirsJson(bool regularization)
    {
        var d = Subsets.Where(s => s.IsRegularization == regularization)
            .ToDictionary(s => s.Name, s => new Dictionary<string, int> { ["n_repeats"] = s.Repeats, ["img_count"] = s.Images.Count });
        return JsonSerializer.Serialize(d);
    }

    /// <summary>Lines for the user: images per subset, repeats, captions found, files skipped.</summary>
    public string Summary()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"dataset: {Layout} layout at {Root}");
        foreach (var s in Subsets)
            sb.AppendLine($"  {(s.IsRegularization ? "class   " : "instance")} '{s.Name}': {s.Images.Count} images x {s.Repeats} repeats, {s.CaptionFilesFound} caption files");
        sb.AppendLine($"  {NumTrainImages} instance samples per epoch, {NumRegImages} class samples");
        if (Unreadable.Count > 0)
        {
            sb.AppendLine($"  skipped {Unreadable.Count} unreadable file(s):");
            foreach (var u in Unreadable) sb.AppendLine($"    {u.Path}: {u.Reason}");
        }
        foreach (var n in Notes) sb.AppendLine("  note: " + n);
        return sb.ToString().TrimEnd();
    }
}
