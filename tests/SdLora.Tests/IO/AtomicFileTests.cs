using SdLora.IO;
using Xunit;

namespace SdLora.Tests.IO;

/// <summary>A write that fails half-way leaves the old file as it was and no temp file behind (house rule: nothing half-written).</summary>
public sealed class AtomicFileTests
{
    [Fact]
    public void A_failed_write_keeps_the_old_file_and_leaves_no_temp_file()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("result.txt");
        File.WriteAllText(path, "old");
        var e = Assert.Throws<IOException>(() => AtomicFile.Write(path, s => { s.WriteByte(1); throw new IOException("disk full"); }));
        Assert.Equal("disk full", e.Message);
        Assert.Equal("old", File.ReadAllText(path));
        Assert.Equal([path], Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void A_write_creates_the_folder_and_replaces_the_file_whole()
    {
        using var dir = Fixtures.TempDir();
        var path = Path.Combine(dir.Path, "new", "folder", "result.bin");
        AtomicFile.WriteAllBytes(path, [1, 2, 3]);
        AtomicFile.WriteAllBytes(path, [4, 5]);
        Assert.Equal(new byte[] { 4, 5 }, File.ReadAllBytes(path));
        Assert.Equal([path], Directory.GetFiles(Path.GetDirectoryName(path)!));
    }
}
