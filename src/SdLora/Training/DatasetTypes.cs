namespace SdLora.Training;

/// <summary>How the images were laid out on disk.</summary>
public enum DatasetLayout
{
    /// <summary>A folder of images (+ optional same-name captions) and <c>--instance-prompt</c>.</summary>
    PlainFolder,
    /// <summary>kohya's root with <c>&lt;repeats&gt;_&lt;identifier&gt; &lt;class&gt;</c> sub-folders.</summary>
    Kohya,
}

/// <summary>One usable training image. Width/Height are upright (after EXIF orientation).</summary>
public sealed record TrainingImage(string Path, string Caption, bool CaptionFromFile, int Width, int Height, bool IsRegularization, string SubsetName);

/// <summary>A folder of images sharing one repeat count (kohya's "subset").</summary>
public sealed record DatasetSubset(string Directory, string Name, int Repeats, bool IsRegularization, IReadOnlyList<TrainingImage> Images)
{
    public int CaptionFilesFound => Images.Count(i => i.CaptionFromFile);
}

/// <summary>A file that looked like an image but could not be used, and why.</summary>
public sealed record UnreadableImage(string Path, string Reason);

/// <summary>Inputs of dataset discovery (usually built from a <see cref="TrainingConfig"/>).</summary>
public sealed record DatasetOptions(
    string Data,
    string? InstancePrompt = null,
    string? RegData = null,
    string? ClassData = null,
    string? ClassPrompt = null,
    int NumRepeats = 10,
    string CaptionExtension = ".txt",
    string? ZipCacheRoot = null,
    ZipLimits? ZipLimits = null)
{
    /// <remarks>Textual inversion with prompt templates replaces every instance caption, so images need none of their own (as in kohya).</remarks>
    public static DatasetOptions FromConfig(TrainingConfig c, string? zipCacheRoot = null) =>
        new(c.Data ?? throw new SdLoraException("data is required") { Setting = "data" },
            c.InstancePrompt ?? (c.Method == TrainingConfig.MethodTextualInversion && c.Template != "captions" ? c.TokenString : null), c.RegData, c.ClassData, c.ClassPrompt,
            c.NumRepeats, c.CaptionExtension, zipCacheRoot);
}
