using System.IO.Compression;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class SafeZipTests
{
    private static string MakeZip(string path, params (string Name, byte[] Data)[] entries)
    {
        using var zip = ZipFile.Open(path, ZipArchiveMode.Create);
        foreach (var (name, data) in entries)
        {
            var e = zip.CreateEntry(name, CompressionLevel.SmallestSize);
            using var s = e.Open();
            s.Write(data);
        }
        return path;
    }

    [Fact]
    public void Zip_of_kohya_dataset_is_unpacked_and_loaded()
    {
        using var tmp = Fixtures.TempDir();
        var src = tmp.File("src");
        TrainingTestData.WritePngs(Path.Combine(src, "img", "5_sks dog"), 2);
        var zipPath = tmp.File("data.zip");
        ZipFile.CreateFromDirectory(src, zipPath);
        var cache = tmp.File("cache");
        var ds = DreamBoothDataset.Load(new DatasetOptions(zipPath, ZipCacheRoot: cache));
        Assert.Equal(DatasetLayout.Kohya, ds.Layout);
        Assert.Equal(10, ds.NumTrainImages);
        Assert.StartsWith(cache, ds.Root);
        // A second load reuses the extraction.
        var again = DreamBoothDataset.Load(new DatasetOptions(zipPath, ZipCacheRoot: cache));
        Assert.Equal(ds.Root, again.Root);
    }

    [Fact]
    public void Zip_entry_climbing_out_with_dotdot_is_refused()
    {
        using var tmp = Fixtures.TempDir();
        var zip = MakeZip(tmp.File("evil.zip"), ("ok.txt", [1]), ("../evil.txt", [1, 2]));
        var ex = Assert.Throws<SdLoraException>(() => SafeZip.Extract(zip, tmp.File("out")));
        Assert.Equal($"{zip}: entry '../evil.txt' climbs out of the folder with '..'; refusing to unpack this zip", ex.Message);
        Assert.False(File.Exists(tmp.File("evil.txt")));
        Assert.False(Directory.Exists(tmp.File("out")));
    }

    // A '..' anywhere in the path is refused, not only at the start, and whichever slash the zip tool wrote;
    // a name that merely begins with dots is an ordinary file.
    [Theory]
    [InlineData("img/../b.txt")]
    [InlineData("img/../../evil.txt")]
    [InlineData("img/5_sks dog/../../../evil.txt")]
    [InlineData("img\\..\\..\\evil.txt")]
    public void Zip_entry_with_dotdot_inside_its_path_is_refused(string entry)
    {
        using var tmp = Fixtures.TempDir();
        var zip = MakeZip(tmp.File("evil.zip"), ("img/ok.txt", [1]), (entry, [1, 2]));
        var ex = Assert.Throws<SdLoraException>(() => SafeZip.Extract(zip, tmp.File("out")));
        Assert.Equal($"{zip}: entry '{entry}' climbs out of the folder with '..'; refusing to unpack this zip", ex.Message);
        Assert.False(Directory.Exists(tmp.File("out")));
        Assert.False(File.Exists(tmp.File("evil.txt")));
    }

    [Fact]
    public void Zip_entry_whose_name_starts_with_dots_is_unpacked()
    {
        using var tmp = Fixtures.TempDir();
        var zip = MakeZip(tmp.File("ok.zip"), ("img/..notes.txt", [7]), ("...txt", [8]));
        SafeZip.Extract(zip, tmp.File("out"));
        Assert.Equal(new byte[] { 7 }, File.ReadAllBytes(Path.Combine(tmp.File("out"), "img", "..notes.txt")));
        Assert.Equal(new byte[] { 8 }, File.ReadAllBytes(Path.Combine(tmp.File("out"), "...txt")));
    }

    [Fact]
    public void Zip_entry_with_absolute_path_is_refused()
    {
        using var tmp = Fixtures.TempDir();
        var zip = MakeZip(tmp.File("abs.zip"), ("/tmp/sdlora-evil.txt", [1]));
        var ex = Assert.Throws<SdLoraException>(() => SafeZip.Extract(zip, tmp.File("out")));
        Assert.Equal($"{zip}: entry '/tmp/sdlora-evil.txt' has an absolute path; refusing to unpack this zip", ex.Message);
    }

    [Fact]
    public void Zip_symlink_entry_is_refused()
    {
        using var tmp = Fixtures.TempDir();
        var zip = tmp.File("link.zip");
        using (var z = ZipFile.Open(zip, ZipArchiveMode.Create))
        {
            var e = z.CreateEntry("link.jpg");
            e.ExternalAttributes = unchecked((int)(0xA1FFu << 16));
            using var s = e.Open();
            s.Write("/etc/passwd"u8);
        }
        var ex = Assert.Throws<SdLoraException>(() => SafeZip.Extract(zip, tmp.File("out")));
        Assert.Contains("'link.jpg' is a symbolic link", ex.Message);
    }

    [Fact]
    public void Zip_bomb_is_refused_by_ratio_and_size_limits()
    {
        using var tmp = Fixtures.TempDir();
        var zip = MakeZip(tmp.File("bomb.zip"), ("zeros.bin", new byte[8 << 20]));
        var ex = Assert.Throws<SdLoraException>(() => SafeZip.Extract(zip, tmp.File("out")));
        Assert.Contains("'zeros.bin' compresses", ex.Message);
        Assert.Contains("a zip bomb?", ex.Message);
        var small = new ZipLimits(MaxFileBytes: 1 << 20, MaxCompressionRatio: 1e9);
        var ex2 = Assert.Throws<SdLoraException>(() => SafeZip.Extract(zip, tmp.File("out2"), small));
        Assert.Contains("over the 1 MiB per-file limit", ex2.Message);
        var fewEntries = new ZipLimits(MaxEntries: 0);
        Assert.Contains("more than the 0 allowed", Assert.Throws<SdLoraException>(() => SafeZip.Extract(zip, tmp.File("out3"), fewEntries)).Message);
    }

    [Fact]
    public void Not_a_zip_is_a_clear_error()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("fake.zip"), "hello");
        var ex = Assert.Throws<SdLoraException>(() => SafeZip.Extract(tmp.File("fake.zip"), tmp.File("out")));
        Assert.StartsWith($"{tmp.File("fake.zip")}: not a readable zip file", ex.Message);
    }
}
