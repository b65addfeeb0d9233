using SdLora.Imaging;
using SdLora.IO;

namespace SdLora.Captioning;

public enum CaptionOutcome { Captioned, Kept, Failed }

/// <summary>What happened to one image: its caption file written, an existing one kept, or the image unreadable.</summary>
public sealed record CaptionFileResult(string ImagePath, string CaptionPath, CaptionOutcome Outcome, string? Caption = null, string? Error = null);

public sealed record CaptionProgress(int Done, int Total, CaptionFileResult Last);

public sealed record DatasetCaptionSummary(IReadOnlyList<CaptionFileResult> Files)
{
    public int Captioned => Files.Count(f => f.Outcome == CaptionOutcome.Captioned);
    public int Kept => Files.Count(f => f.Outcome == CaptionOutcome.Kept);
    public int Failed => Files.Count(f => f.Outcome == CaptionOutcome.Failed);
}

public sealed record DatasetCaptionOptions
{
    /// <summary>Caption file extension, <c>.txt</c> or <c>.caption</c> (kohya reads either, set by its <c>caption_extension</c>).</summary>
    public string Extension { get; init; } = ".txt";
    /// <summary>Text put before every caption, e.g. <c>"sks dog, "</c>.</summary>
    public string Prefix { get; init; } = "";
    public bool Overwrite { get; init; }
    public int BatchSize { get; init; } = 1;
}

/// <summary>
/// Writes one caption file next to every training image (same base name), as the kohya workflow's captioning step
/// does: walks a plain image folder or the <c>N_identifier class</c> sub-folder layout, keeps existing captions unless
/// asked to overwrite, lists and skips images that cannot be read.
/// </summary>
public static class DatasetCaptioner
{
    public static string NormalizeExtension(string extension)
    {
        var ext = extension.Trim();
        if (!ext.StartsWith('.')) ext = "." + ext;
        if (ext.Length < 2 || ext.Skip(1).Any(c => !char.IsLetterOrDigit(c) && c != '_' && c != '-'))
            throw new SdLoraException($"caption extension '{extension}' is not a file extension; use .txt or .caption");
        if (RgbImage.HasImageExtension("x" + ext))
            throw new SdLoraException($"caption extension '{extension}' is an image extension and would overwrite images; use .txt or .caption");
        return ext;
    }

    public static string CaptionPathFor(string imagePath, string extension) => Path.ChangeExtension(imagePath, NormalizeExtension(extension));

    /// <summary>Images under <paramref name="folder"/> and its sub-folders (hidden files and folders skipped), in a stable order.</summary>
    public static IReadOnlyList<string> FindImages(string folder)
    {
        if (!Directory.Exists(folder)) throw new SdLoraException($"{folder}: folder not found; pass the training image folder");
        var result = new List<string>();
        void Walk(string dir)
        {
            foreach (var f in Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal))
                if (!Path.GetFileName(f).StartsWith('.') && RgbImage.HasImageExtension(f)) result.Add(f);
            foreach (var d in Directory.EnumerateDirectories(dir).Order(StringComparer.Ordinal))
                if (!Path.GetFileName(d).StartsWith('.')) Walk(d);
        }
        Walk(folder);
        return result;
    }

    /// <summary>Captions every image with <paramref name="captioner"/> (batch of images in, one caption each out).</summary>
    public static DatasetCaptionSummary Run(string folder, Func<IReadOnlyList<RgbImage>, CancellationToken, IReadOnlyList<string>> captioner,
        DatasetCaptionOptions options, IProgress<CaptionProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        if (options.BatchSize < 1) throw new SdLoraException($"--batch-size {options.BatchSize}: must be at least 1");
        var ext = NormalizeExtension(options.Extension);
        var images = FindImages(folder);
        var results = new List<CaptionFileResult>();
        void Report(CaptionFileResult r) { results.Add(r); progress?.Report(new CaptionProgress(results.Count, images.Count, r)); }

        var pending = new List<(string Image, string CaptionFile, RgbImage Pixels)>();
        void Flush()
        {
            if (pending.Count == 0) return;
            var captions = captioner(pending.Select(p => p.Pixels).ToList(), cancellationToken);
            for (int i = 0; i < pending.Count; i++)
            {
                var text = options.Prefix + captions[i].Trim();
                AtomicFile.WriteAllText(pending[i].CaptionFile, text + "\n");
                Report(new CaptionFileResult(pending[i].Image, pending[i].CaptionFile, CaptionOutcome.Captioned, text));
            }
            pending.Clear();
        }

        foreach (var image in images)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var captionFile = Path.ChangeExtension(image, ext);
            if (!options.Overwrite && File.Exists(captionFile))
            {
                Report(new CaptionFileResult(image, captionFile, CaptionOutcome.Kept));
                continue;
            }
            try
            {
                pending.Add((image, captionFile, RgbImage.Load(image)));
            }
            catch (Exception e) when (e is SdLoraException or IOException or UnauthorizedAccessException)
            {
                Report(new CaptionFileResult(image, captionFile, CaptionOutcome.Failed, Error: e.Message));
                continue;
            }
            if (pending.Count >= options.BatchSize) Flush();
        }
        Flush();
        return new DatasetCaptionSummary(results);
    }

    /// <summary>Captions every image with a loaded BLIP model.</summary>
    public static DatasetCaptionSummary Run(string folder, BlipCaptioner blip, BlipCaptionOptions captionOptions, DatasetCaptionOptions options,
        IProgress<CaptionProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Run(folder, (batch, ct) => blip.Caption(batch, captionOptions, cancellationToken: ct), options, progress, cancellationToken);
}
