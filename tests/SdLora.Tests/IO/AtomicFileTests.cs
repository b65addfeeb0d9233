using SdLora.IO;
using Xunit;

namespace SdLora.Tests.IO;

public class AtomicFileTests
{
    [Fact]
    public void Replacing_a_folder_swaps_in_the_new_one_and_leaves_nothing_behind()
    {
        using var dir = Fixtures.TempDir();
        var target = dir.File("model");
        Directory.CreateDirectory(target);
        File.WriteAllText(Path.Combine(target, "old.txt"), "old");
        var fresh = dir.File(".model.tmp");
        Directory.CreateDirectory(fresh);
        File.WriteAllText(Path.Combine(fresh, "new.txt"), "new");

        AtomicFile.ReplaceFolder(fresh, target);

        Assert.Equal(["new.txt"], Directory.GetFiles(target).Select(Path.GetFileName));
        Assert.Equal([target], Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void A_failed_replacement_puts_the_old_folder_back()
    {
        using var dir = Fixtures.TempDir();
        var target = dir.File("model");
        Directory.CreateDirectory(target);
        File.WriteAllText(Path.Combine(target, "old.txt"), "old");

        Assert.ThrowsAny<IOException>(() => AtomicFile.ReplaceFolder(dir.File("missing"), target));

        Assert.Equal("old", File.ReadAllText(Path.Combine(target, "old.txt")));
        Assert.Equal([target], Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Writing_a_file_that_fails_midway_keeps_the_old_file_and_no_temp_file()
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("lora.safetensors");
        File.WriteAllText(path, "trained");

        Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, s => { s.WriteByte(1); throw new InvalidOperationException("disk full"); }));

        Assert.Equal("trained", File.ReadAllText(path));
        Assert.Equal([path], Directory.GetFileSystemEntries(dir.Path));
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
