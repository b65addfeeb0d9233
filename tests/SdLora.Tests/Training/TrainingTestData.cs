using SdLora.Imaging;
using SdLora.Training;

namespace SdLora.Tests.Training;

/// <summary>Builders for dataset folders: the bundled DreamBooth photos, or tiny generated PNGs where only layout matters.</summary>
internal static class TrainingTestData
{
    public static string PhotosDir(string subject) => Path.Combine(Fixtures.RepoRoot, "assets", "dreambooth", subject);

    public static void CopyPhotos(string subject, string destination, int count)
    {
        Directory.CreateDirectory(destination);
        foreach (var f in Directory.GetFiles(PhotosDir(subject), "*.jpg").Order().Take(count))
            File.Copy(f, Path.Combine(destination, subject + "_" + Path.GetFileName(f)));
    }

    public static string WritePng(string path, int width = 64, int height = 64, byte shade = 128)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var px = new byte[width * height * 3];
        for (int i = 0; i < px.Length; i++) px[i] = (byte)(shade + i % 7);
        ImageOps.SavePng(new RgbImage(width, height, px), path);
        return path;
    }

    public static void WritePngs(string dir, int count, int width = 64, int height = 64)
    {
        for (int i = 0; i < count; i++) WritePng(Path.Combine(dir, $"img{i:D2}.png"), width, height, (byte)(40 + i * 10));
    }
}
