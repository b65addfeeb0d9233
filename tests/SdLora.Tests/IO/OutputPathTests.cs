using SdLora.IO;
using Xunit;

namespace SdLora.Tests.IO;

public class OutputPathTests
{
    [Fact]
    public void Output_file_that_is_an_input_is_refused_even_through_a_link_and_with_overwrite()
    {
        using var dir = Fixtures.TempDir();
        var input = dir.File("trained.safetensors");
        File.WriteAllText(input, "my LoRA");
        var link = dir.File("link.safetensors");
        File.CreateSymbolicLink(link, "trained.safetensors");
        Directory.CreateDirectory(dir.File("sub"));

        foreach (var output in new[] { input, link, Path.Combine(dir.Path, "sub", "..", "trained.safetensors") })
        {
            var e = Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(output, overwrite: true, inputs: ["model.safetensors", input]));
            Assert.Contains("input", e.Message);
        }
        Assert.Equal("my LoRA", File.ReadAllText(input));
    }

    [Fact]
    public void Existing_output_file_is_refused_unless_overwrite()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("out.safetensors");
        File.WriteAllText(output, "old");
        var e = Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(output, overwrite: false));
        Assert.Contains("already exists", e.Message);
        Assert.Contains("overwrite", e.Message);
        Assert.Equal(Path.GetFullPath(output), OutputPath.CheckFile(output, overwrite: true));
        Assert.Equal("old", File.ReadAllText(output));
    }

    [Fact]
    public void Output_file_check_creates_the_folder_and_leaves_no_probe_behind()
    {
        using var dir = Fixtures.TempDir();
        var output = Path.Combine(dir.Path, "new", "deeper", "out.safetensors");
        OutputPath.CheckFile(output, overwrite: false);
        Assert.True(Directory.Exists(Path.GetDirectoryName(output)));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.GetDirectoryName(output)!));
    }

    [Fact]
    public void Output_file_naming_a_folder_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var e = Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(dir.Path, overwrite: true));
        Assert.Contains("is a folder", e.Message);
    }

    [Fact]
    public void Unwritable_location_is_a_user_error_before_any_work()
    {
        using var dir = Fixtures.TempDir();
        var file = dir.File("a-file");
        File.WriteAllText(file, "x");
        // A folder below a file can never be created, on any OS.
        var e = Assert.Throws<SdLoraException>(() => OutputPath.CheckFolder(Path.Combine(file, "images")));
        Assert.Contains("cannot write", e.Message);
        Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(Path.Combine(file, "x.safetensors"), overwrite: false));
        if (OperatingSystem.IsLinux())
        {
            // The example: /proc takes no new files, even for root.
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFolder("/proc/x"));
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFile("/proc/x", overwrite: true));
        }
    }

    [Fact]
    public void Output_folder_that_is_a_file_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var file = dir.File("images");
        File.WriteAllText(file, "x");
        Assert.Contains("is a file", Assert.Throws<SdLoraException>(() => OutputPath.CheckFolder(file)).Message);
    }

    [Fact]
    public void Replaced_folder_must_be_new_or_empty_unless_overwrite_and_never_hold_an_input()
    {
        using var dir = Fixtures.TempDir();
        var model = Path.Combine(dir.Path, "model");
        Directory.CreateDirectory(Path.Combine(model, "unet"));
        File.WriteAllText(Path.Combine(model, "unet", "w.safetensors"), "w");
        var lora = dir.File("lora.safetensors");
        File.WriteAllText(lora, "l");

        Assert.Throws<SdLoraException>(() => OutputPath.CheckReplacedFolder(model, overwrite: true, inputs: [model, lora]));
        Assert.Throws<SdLoraException>(() => OutputPath.CheckReplacedFolder(dir.Path, overwrite: true, inputs: [model, lora]));
        Assert.Throws<SdLoraException>(() => OutputPath.CheckReplacedFolder(Path.Combine(model, "merged"), overwrite: true, inputs: [model, lora]));

        var used = Path.Combine(dir.Path, "merged");
        Directory.CreateDirectory(used);
        File.WriteAllText(Path.Combine(used, "keep.txt"), "k");
        Assert.Contains("not empty", Assert.Throws<SdLoraException>(() => OutputPath.CheckReplacedFolder(used, overwrite: false, inputs: [model, lora])).Message);
        OutputPath.CheckReplacedFolder(used, overwrite: true, inputs: [model, lora]);
        OutputPath.CheckReplacedFolder(Path.Combine(dir.Path, "fresh"), overwrite: false, inputs: [model, lora]);
    }

    [Fact]
    public void Links_resolve_through_relative_targets_and_linked_folders()
    {
        using var dir = Fixtures.TempDir();
        var real = Path.Combine(dir.Path, "real");
        Directory.CreateDirectory(real);
        File.WriteAllText(Path.Combine(real, "f.txt"), "x");
        Directory.CreateSymbolicLink(Path.Combine(dir.Path, "alias"), "real");
        File.CreateSymbolicLink(Path.Combine(dir.Path, "f-link.txt"), Path.Combine("alias", "f.txt"));

        Assert.True(OutputPath.SameLocation(Path.Combine(dir.Path, "alias", "f.txt"), Path.Combine(real, "f.txt")));
        Assert.True(OutputPath.SameLocation(Path.Combine(dir.Path, "f-link.txt"), Path.Combine(real, "f.txt")));
        Assert.False(OutputPath.SameLocation(Path.Combine(dir.Path, "alias", "g.txt"), Path.Combine(real, "f.txt")));
        Assert.Equal(Path.Combine(OutputPath.ResolveLinks(real), "new", "g.txt"), OutputPath.ResolveLinks(Path.Combine(dir.Path, "alias", "new", "g.txt")));
        Assert.True(OutputPath.IsInside(Path.Combine(dir.Path, "alias", "f.txt"), real));
    }
}
