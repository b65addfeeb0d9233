using SdLora.Imaging;
using SdLora.IO;

namespace SdLora.Training;

/// <summary>
/// The folder of prior-preservation class images: how many usable ones exist, and saving new ones as
/// <c>class_00001.png</c> with the prompt beside them (<c>class_00001.txt</c>) so later runs reuse them.
/// </summary>
public static class ClassImageFolder
{
    /// <summary>Existing images (any supported format) in <paramref name="dir"/>; 0 when it does not exist.</summary>
    public static int CountExisting(string dir) => Directory.Exists(dir) ? DreamBoothDataset.ImageFiles(dir).Count() : 0;

    /// <summary>How many images still need generating to reach <paramref name="wanted"/>.</summary>
    public static int Missing(string dir, int wanted) => Math.Max(0, wanted - CountExisting(dir));

    /// <summary>Saves one generated class image and its prompt (both atomically) under the next free number; returns the image path.</summary>
    public static string Save(string dir, RgbImage image, string prompt)
    {
        Directory.CreateDirectory(dir);
        int n = 1;
        string path;
        while (File.Exists(path = Path.Combine(dir, $"class_{n:D5}.png"))) n++;
        AtomicFile.WriteAllText(Path.ChangeExtension(path, ".txt"), prompt);
        ImageOps.SavePng(image, path);
        return path;
    }
}
