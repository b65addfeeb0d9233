using SdLora.IO;
using Xunit;

namespace SdLora.Tests.IO;

/// <summary>Each refusal of <see cref="OutputPath"/> with its whole message, and the edges of its rules.</summary>
public class OutputPathMessageTests
{
    [Theory]
    [InlineData("")]
    [InlineData("  ")]
    public void An_empty_path_is_refused_in_each_kind_of_check(string path)
    {
        Assert.Equal("no merged model file given; name the file to write",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(path, overwrite: true, what: "merged model")).Message);
        Assert.Equal("no image folder given; name the folder to write to",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFolder(path, what: "image folder")).Message);
        Assert.Equal("no diffusers folder given; name the folder to write",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckReplacedFolder(path, overwrite: true, what: "diffusers folder")).Message);
    }

    [Fact]
    public void Files_and_folders_in_the_wrong_place_are_refused_with_the_fix()
    {
        using var dir = Fixtures.TempDir();
        var file = dir.File("taken.safetensors");
        File.WriteAllText(file, "x");
        var folder = dir.File("a-folder");
        Directory.CreateDirectory(folder);

        Assert.Equal($"{folder}: is a folder; the LoRA is a file, so give a file name (e.g. {Path.Combine(folder, "out.safetensors")})",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(folder, overwrite: true, what: "LoRA")).Message);
        Assert.Equal($"{file}: already exists; choose another LoRA path, or set overwrite (--overwrite) to replace it",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(file, overwrite: false, what: "LoRA")).Message);
        Assert.Equal($"{file}: is a file, but the image folder must be a folder; choose a folder name",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFolder(file, what: "image folder")).Message);
        Assert.Equal($"{file}: is a file, but the diffusers folder is a folder; choose a new folder name",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckReplacedFolder(file, overwrite: true, what: "diffusers folder")).Message);

        File.WriteAllText(Path.Combine(folder, "model_index.json"), "{}");
        Assert.Equal($"{folder}: already exists and is not empty; choose another diffusers folder, or set overwrite (--overwrite) to replace it",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckReplacedFolder(folder, overwrite: false, what: "diffusers folder")).Message);
        Assert.Equal(folder, OutputPath.CheckReplacedFolder(folder, overwrite: true, what: "diffusers folder"));
        var empty = dir.File("empty");
        Directory.CreateDirectory(empty);
        Assert.Equal(empty, OutputPath.CheckReplacedFolder(empty + "/", overwrite: false)); // an empty folder is free; the trailing slash goes
        Assert.False(Directory.Exists(dir.File("new-model")), "a replaced folder is not created before its writer makes it");
        Assert.Equal(dir.File("new-model"), OutputPath.CheckReplacedFolder(dir.File("new-model"), overwrite: false));
        Assert.False(Directory.Exists(dir.File("new-model")));
    }

    [Fact]
    public void Writing_over_an_input_names_the_input_and_says_how_they_clash()
    {
        using var dir = Fixtures.TempDir();
        var model = dir.File("model");
        Directory.CreateDirectory(model);
        var weights = Path.Combine(model, "unet.safetensors");
        File.WriteAllText(weights, "w");
        var lora = dir.File("my.safetensors");
        File.WriteAllText(lora, "l");

        Assert.Equal($"{lora}: is the input {lora}; writing the merged model there would replace it, so choose another merged model",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(lora, overwrite: true, inputs: [null, " ", lora], what: "merged model")).Message);
        Assert.Equal($"{weights}: is inside or holds the input {model}; writing the merged model there would replace it, so choose another merged model",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFile(weights, overwrite: true, inputs: [model], what: "merged model")).Message);
        // A new file inside an input folder replaces nothing.
        Assert.Equal(Path.Combine(model, "new.safetensors"), OutputPath.CheckFile(Path.Combine(model, "new.safetensors"), overwrite: false, inputs: [model]));
        Assert.Equal($"{dir.Path}: is inside or holds the input {model}; writing the output folder there would replace it, so choose another output folder",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckReplacedFolder(dir.Path, overwrite: true, inputs: [model])).Message);
        Assert.Equal($"{model}: is the input {model}; writing the output folder there would replace it, so choose another output folder",
            Assert.Throws<SdLoraException>(() => OutputPath.CheckFolder(model, inputs: [model])).Message);
    }

    [Fact]
    public void A_folder_that_cannot_be_written_is_named_with_the_reason()
    {
        using var dir = Fixtures.TempDir();
        var file = dir.File("plain-file");
        File.WriteAllText(file, "x");
        var e = Assert.Throws<SdLoraException>(() => OutputPath.EnsureWritableFolder(Path.Combine(file, "sub"), "sample folder"));
        Assert.StartsWith($"{Path.Combine(file, "sub")}: cannot write the sample folder there (", e.Message);
        Assert.EndsWith("); choose a folder you can write to", e.Message);
        Assert.DoesNotContain(".)", e.Message);
        Assert.Empty(Directory.EnumerateFiles(dir.Path, ".sdlora-write-test-*"));
        OutputPath.EnsureWritableFolder(dir.File("fresh"));
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.File("fresh"))); // the probe is gone again
    }

    [Fact]
    public void A_cycle_of_symbolic_links_is_refused_after_40_levels()
    {
        using var dir = Fixtures.TempDir();
        File.CreateSymbolicLink(dir.File("a"), dir.File("b"));
        File.CreateSymbolicLink(dir.File("b"), dir.File("a"));
        var e = Assert.Throws<SdLoraException>(() => OutputPath.ResolveLinks(Path.Combine(dir.File("a"), "x")));
        Assert.EndsWith(": too many levels of symbolic links", e.Message);
        // A chain of 40 links still resolves.
        var target = dir.File("real");
        Directory.CreateDirectory(target);
        var previous = target;
        for (int i = 0; i < 40; i++)
        {
            var link = dir.File($"l{i}");
            Directory.CreateSymbolicLink(link, previous);
            previous = link;
        }
        Assert.Equal(OutputPath.ResolveLinks(target), OutputPath.ResolveLinks(previous));
    }
}
