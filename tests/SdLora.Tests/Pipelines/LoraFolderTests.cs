using SdLora.Pipelines;
using Xunit;

namespace SdLora.Tests.Pipelines;

public class LoraFolderTests
{
    [Fact]
    public void Tag_names_resolve_to_files_in_the_folder_and_its_sub_folders()
    {
        using var tmp = Fixtures.TempDir();
        var loras = Directory.CreateDirectory(tmp.File("lora")).FullName;
        File.WriteAllText(Path.Combine(loras, "dog.safetensors"), "x");
        Directory.CreateDirectory(Path.Combine(loras, "styles"));
        File.WriteAllText(Path.Combine(loras, "styles", "ink.pt"), "x");
        File.WriteAllText(Path.Combine(loras, "notes.txt"), "x");

        Assert.Equal(Path.Combine(loras, "dog.safetensors"), LoraFolder.Resolve("dog", loras));
        Assert.Equal(Path.Combine(loras, "styles", "ink.pt"), LoraFolder.Resolve("ink", loras));
        Assert.Equal(["dog", "ink"], LoraFolder.List(loras).Select(e => e.Name));
        Assert.Equal(Path.Combine("styles", "ink.pt"), LoraFolder.List(loras)[1].RelativePath);
    }

    [Theory]
    [InlineData("../secret")]
    [InlineData("sub/dog")]
    [InlineData("/etc/passwd")]
    [InlineData("..")]
    public void Paths_in_tags_are_refused(string name)
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("secret.safetensors"), "x");
        var loras = Directory.CreateDirectory(tmp.File("lora")).FullName;
        Directory.CreateDirectory(Path.Combine(loras, "sub"));
        File.WriteAllText(Path.Combine(loras, "sub", "dog.safetensors"), "x");
        var e = Assert.Throws<SdLoraException>(() => LoraFolder.Resolve(name, loras));
        Assert.Contains("not a path", e.Message);
    }

    [Fact]
    public void A_file_outside_the_folder_is_not_found_even_when_it_exists()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("outside.safetensors"), "x");
        var loras = Directory.CreateDirectory(tmp.File("lora")).FullName;
        // Before: a tag that named an existing file anywhere was loaded from there.
        Assert.Throws<SdLoraException>(() => LoraFolder.Resolve(tmp.File("outside.safetensors"), loras));
        Assert.Throws<SdLoraException>(() => LoraFolder.Resolve("outside", loras));
    }

    [Fact]
    public void Links_that_lead_out_of_the_folder_are_refused_and_not_listed()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("outside.safetensors"), "x");
        var loras = Directory.CreateDirectory(tmp.File("lora")).FullName;
        File.WriteAllText(Path.Combine(loras, "real.safetensors"), "x");
        File.CreateSymbolicLink(Path.Combine(loras, "escape.safetensors"), tmp.File("outside.safetensors"));
        File.CreateSymbolicLink(Path.Combine(loras, "alias.safetensors"), Path.Combine(loras, "real.safetensors"));
        Directory.CreateSymbolicLink(Path.Combine(loras, "linked-dir"), tmp.Path);

        Assert.Equal(["alias", "real"], LoraFolder.List(loras).Select(e => e.Name));
        Assert.Contains("outside the LoRA folder", Assert.Throws<SdLoraException>(() => LoraFolder.Resolve("escape", loras)).Message);
        Assert.Equal(Path.Combine(loras, "alias.safetensors"), LoraFolder.Resolve("alias", loras));
    }
}
