using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class SamplePromptsTests
{
    [Fact]
    public void Kohya_line_options_set_negative_size_seed_cfg_and_steps()
    {
        var p = SamplePrompts.Parse("a photo of sks dog, on grass --n blurry, low quality --w 640 --h 512 --d 7 --l 5.5 --s 12", 512, 512, 42);
        Assert.Equal(new SamplePrompt("a photo of sks dog, on grass", "blurry, low quality", 640, 512, 7, 5.5, 12), p);
        var d = SamplePrompts.Parse("a dog", 256, 384, 42);
        Assert.Equal(new SamplePrompt("a dog", "", 256, 384, 42, 7.5, 20), d);
    }

    [Fact]
    public void File_skips_comments_and_numbers_default_seeds_by_prompt()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllText(dir.File("p.txt"), "# samples\n\na dog\na cat --d 100\na bird\n");
        var list = SamplePrompts.Read(dir.File("p.txt"), 512, 512, 10);
        Assert.Equal(["a dog", "a cat", "a bird"], list.Select(p => p.Prompt));
        Assert.Equal([10L, 100L, 12L], list.Select(p => p.Seed));
    }

    [Fact]
    public void Bad_lines_name_the_file_line_and_fix()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllText(dir.File("p.txt"), "a dog --x 3\n");
        var e = Assert.Throws<SdLoraException>(() => SamplePrompts.Read(dir.File("p.txt"), 512, 512, 1));
        Assert.Contains("p.txt:1", e.Message);
        Assert.Contains("unknown option --x", e.Message);
        var n = Assert.Throws<SdLoraException>(() => SamplePrompts.Parse("a dog --w wide", 512, 512, 1));
        Assert.Contains("--w needs a number", n.Message);
        var s = Assert.Throws<SdLoraException>(() => SamplePrompts.Parse("a dog --w 500", 512, 512, 1));
        Assert.Contains("multiples of 8", s.Message);
        var missing = Assert.Throws<SdLoraException>(() => SamplePrompts.Read(dir.File("none.txt"), 512, 512, 1));
        Assert.Contains("file not found", missing.Message);
    }
}
