using System.Text.Json;
using Microsoft.AspNetCore.Http;
using SdLora.Captioning;
using SdLora.Imaging;
using SdLora.IO;
using SdLora.Training;
using SkiaSharp;
using SdLora.Web.Jobs;

namespace SdLora.Web;

/// <summary>The prompts and repeats a dataset trains with (<c>dataset.json</c> beside the images).</summary>
public sealed record DatasetSettings(string? InstancePrompt = null, string? ClassPrompt = null, int Repeats = 10);

public sealed record DatasetImage(string File, string? Caption, long Size);

public sealed record DatasetSummary(string Name, int Images, int Captioned, DatasetSettings Settings, string Layout);

public sealed record DatasetDetail(string Name, DatasetSettings Settings, string Layout, IReadOnlyList<DatasetImage> Images);

public sealed record UploadResult(IReadOnlyList<string> Added, IReadOnlyList<string> Skipped);

/// <summary>
/// Training image folders under <c>DATA/datasets</c>: create, upload photos or a zip (the training zip rules: see
/// <see cref="SafeZip"/>), list with captions, edit a caption (the <c>.txt</c> file training reads), thumbnails.
/// </summary>
public sealed class Datasets(DataFolders folders, ServeOptions options)
{
    private const string SettingsFile = "dataset.json";

    public string PathOf(string name) => DataFolders.Inside(folders.Datasets, name, "dataset");

    public IReadOnlyList<DatasetSummary> List() =>
        Directory.EnumerateDirectories(folders.Datasets).Order(StringComparer.Ordinal)
            .Where(d => !System.IO.Path.GetFileName(d).StartsWith('.'))
            .Select(d =>
            {
                var name = System.IO.Path.GetFileName(d);
                var images = DatasetCaptioner.FindImages(d);
                var settings = Settings(name);
                return new DatasetSummary(name, images.Count, images.Count(i => File.Exists(System.IO.Path.ChangeExtension(i, ".txt"))), settings, Layout(d, settings));
            }).ToList();

    public DatasetSummary Create(string? name, DatasetSettings settings)
    {
        var n = DataFolders.CheckNewName(name, "dataset");
        var dir = System.IO.Path.Combine(folders.Datasets, n);
        if (Directory.Exists(dir)) throw new ApiException(409, $"dataset '{n}' already exists");
        Directory.CreateDirectory(dir);
        SaveSettings(n, settings);
        return List().First(d => d.Name == n);
    }

    public DatasetSettings Settings(string name)
    {
        var file = System.IO.Path.Combine(PathOf(name), SettingsFile);
        if (!File.Exists(file)) return new DatasetSettings();
        try { return JsonSerializer.Deserialize<DatasetSettings>(File.ReadAllText(file), JobJson.Options) ?? new DatasetSettings(); }
        catch (JsonException) { return new DatasetSettings(); }
    }

    public void SaveSettings(string name, DatasetSettings settings)
    {
        if (settings.Repeats is < 1 or > 1000) throw new ApiException(400, $"repeats {settings.Repeats} is out of range: use 1-1000 (10 is kohya's usual)");
        AtomicFile.WriteAllText(System.IO.Path.Combine(PathOf(name), SettingsFile), JsonSerializer.Serialize(settings, JobJson.Indented));
    }

    public DatasetDetail Detail(string name)
    {
        var dir = PathOf(name);
        var settings = Settings(name);
        var images = DatasetCaptioner.FindImages(dir).Select(i =>
        {
            var caption = System.IO.Path.ChangeExtension(i, ".txt");
            return new DatasetImage(System.IO.Path.GetRelativePath(dir, i).Replace('\\', '/'), File.Exists(caption) ? File.ReadAllText(caption).Trim() : null, new FileInfo(i).Length);
        }).ToList();
        return new DatasetDetail(name, settings, Layout(dir, settings), images);
    }

    /// <summary>How training reads the folder, in kohya's words.</summary>
    private static string Layout(string dir, DatasetSettings s)
    {
        var kohya = Directory.EnumerateDirectories(dir).Select(System.IO.Path.GetFileName).OfType<string>()
            .Where(d => DreamBoothDataset.TryParseKohyaFolder(d, out _, out _)).Order(StringComparer.Ordinal).ToList();
        if (kohya.Count > 0)
            return "kohya dataset root: " + string.Join("; ", kohya.Select(k =>
            {
                DreamBoothDataset.TryParseKohyaFolder(k, out int r, out string tokens);
                return $"'{k}' = {r} repeats of '{tokens}'";
            }));
        var prompt = string.IsNullOrWhiteSpace(s.InstancePrompt) ? "(captions only)" : s.InstancePrompt.Trim();
        return $"plain folder, trained as kohya's '{s.Repeats}_{prompt}': {s.Repeats} repeats per epoch, instance prompt '{prompt}'" +
               (string.IsNullOrWhiteSpace(s.ClassPrompt) ? "" : $", class prompt '{s.ClassPrompt.Trim()}' (prior preservation)") +
               "; an image's .txt caption replaces the instance prompt";
    }

    public void SetCaption(string name, string image, string caption)
    {
        var path = ImagePath(name, image);
        if (caption.Length > 4000) throw new ApiException(400, "caption is longer than 4000 characters");
        AtomicFile.WriteAllText(System.IO.Path.ChangeExtension(path, ".txt"), caption.ReplaceLineEndings(" ").Trim() + "\n");
    }

    public void DeleteImage(string name, string image)
    {
        var path = ImagePath(name, image);
        File.Delete(path);
        File.Delete(System.IO.Path.ChangeExtension(path, ".txt"));
    }

    public string ImagePath(string name, string image)
    {
        var path = DataFolders.Inside(PathOf(name), image, "image");
        if (!RgbImage.HasImageExtension(path)) throw new ApiException(400, $"'{image}' is not an image file");
        return path;
    }

    /// <summary>Adds uploaded photos and zips (unpacked with the training zip rules) to the dataset, within the upload limits.</summary>
    public async Task<UploadResult> Upload(string name, IFormFileCollection files, CancellationToken ct)
    {
        var dir = PathOf(name);
        var limits = options.Uploads;
        if (files.Count == 0) throw new ApiException(400, "no files in the upload: send images or a .zip as multipart form data");
        if (files.Count > limits.MaxFiles) throw new ApiException(400, $"{files.Count} files in one upload, more than the {limits.MaxFiles} allowed");
        if (files.Sum(f => f.Length) > limits.MaxTotalBytes) throw new ApiException(413, $"upload exceeds {limits.MaxTotalBytes >> 20} MiB in total");
        var added = new List<string>();
        var skipped = new List<string>();
        foreach (var file in files)
        {
            var fileName = System.IO.Path.GetFileName(file.FileName.Replace('\\', '/'));
            if (file.Length > limits.MaxFileBytes)
                throw new ApiException(413, $"{fileName} is {file.Length >> 10} KiB, over the {limits.MaxFileBytes >> 10} KiB per-file limit");
            var ext = System.IO.Path.GetExtension(fileName).ToLowerInvariant();
            var staging = System.IO.Path.Combine(folders.Temp, Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(staging);
            try
            {
                var tmp = System.IO.Path.Combine(staging, "upload" + ext);
                await using (var fs = File.Create(tmp)) await file.CopyToAsync(fs, ct);
                if (ext == ".zip")
                {
                    var unpacked = System.IO.Path.Combine(staging, "unpacked");
                    try { SafeZip.Extract(tmp, unpacked, new ZipLimits(limits.MaxFiles * 2, limits.MaxFileBytes, limits.MaxTotalBytes)); }
                    catch (SdLoraException e) { throw new ApiException(400, e.Message.Replace(tmp, fileName)); }
                    foreach (var f in Directory.EnumerateFiles(unpacked, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
                    {
                        var rel = System.IO.Path.GetRelativePath(unpacked, f).Replace('\\', '/');
                        if (rel.Split('/').Any(s => s.StartsWith('.'))) continue;
                        if (RgbImage.HasImageExtension(f)) Place(f, rel, dir, added, skipped);
                        else if (System.IO.Path.GetExtension(f).ToLowerInvariant() is ".txt" or ".caption") PlaceCaption(f, rel, dir);
                    }
                }
                else if (RgbImage.HasImageExtension(fileName)) Place(tmp, fileName, dir, added, skipped);
                else skipped.Add($"{fileName}: not an image or .zip");
            }
            finally { Directory.Delete(staging, true); }
        }
        return new UploadResult(added, skipped);
    }

    private void Place(string source, string relative, string dir, List<string> added, List<string> skipped)
    {
        var why = CheckImage(source);
        if (why is not null) { skipped.Add($"{relative}: {why}"); return; }
        var target = FreeName(dir, relative);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(target)!);
        File.Move(source, target);
        added.Add(System.IO.Path.GetRelativePath(dir, target).Replace('\\', '/'));
    }

    private static void PlaceCaption(string source, string relative, string dir)
    {
        var target = System.IO.Path.Combine(dir, Clean(relative));
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(target)!);
        File.Move(source, target, overwrite: true);
    }

    private string? CheckImage(string path)
    {
        using var codec = SKCodec.Create(path);
        if (codec is null) return "not a readable image";
        long pixels = (long)codec.Info.Width * codec.Info.Height;
        return pixels > options.Uploads.MaxPixels ? $"{codec.Info.Width}x{codec.Info.Height} is over the {options.Uploads.MaxPixels / 1_000_000} megapixel limit" : null;
    }

    // Upload names become file names: keep letters, digits and a few marks in each folder segment.
    private static string Clean(string relative) => string.Join('/', relative.Split('/').Select(s =>
    {
        var c = new string(s.Select(ch => char.IsLetterOrDigit(ch) || ch is ' ' or '-' or '_' or '.' ? ch : '_').ToArray()).Trim();
        return c.Length == 0 || c.StartsWith('.') ? "_" + c : c;
    }));

    private static string FreeName(string dir, string relative)
    {
        var clean = Clean(relative);
        var target = System.IO.Path.Combine(dir, clean);
        var stem = System.IO.Path.ChangeExtension(target, null);
        var ext = System.IO.Path.GetExtension(target);
        for (int i = 1; File.Exists(target); i++)
            target = $"{stem}-{i}{ext}";
        return target;
    }

    /// <summary>A JPEG at most 256 px on its longer side, cached under <c>DATA/cache/thumbs</c>.</summary>
    public string Thumbnail(string name, string image)
    {
        var path = ImagePath(name, image);
        var info = new FileInfo(path);
        var key = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"{info.FullName}|{info.Length}|{info.LastWriteTimeUtc.Ticks}")))[..24];
        var thumb = System.IO.Path.Combine(folders.Thumbnails, key + ".jpg");
        if (File.Exists(thumb)) return thumb;
        using var bitmap = SKBitmap.Decode(path) ?? throw new ApiException(415, $"'{image}' is not a readable image");
        double scale = Math.Min(1.0, 256.0 / Math.Max(bitmap.Width, bitmap.Height));
        using var small = bitmap.Resize(new SKImageInfo(Math.Max(1, (int)(bitmap.Width * scale)), Math.Max(1, (int)(bitmap.Height * scale))), new SKSamplingOptions(SKFilterMode.Linear, SKMipmapMode.Linear));
        using var img = SKImage.FromBitmap(small);
        using var data = img.Encode(SKEncodedImageFormat.Jpeg, 82);
        AtomicFile.WriteAllBytes(thumb, data.AsSpan());
        return thumb;
    }
}
