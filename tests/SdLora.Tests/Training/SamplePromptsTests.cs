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
    [Theory]
    [InlineData("a dog --w 56", "sample prompt: size 56x512 must be multiples of 8 and at least 64")]
    [InlineData("a dog --h 56", "sample prompt: size 512x56 must be multiples of 8 and at least 64")]
    [InlineData("a dog --h 516", "sample prompt: size 512x516 must be multiples of 8 and at least 64")]
    [InlineData("a dog --w 64 --h 64", null)]
    [InlineData("a dog --s 0", "sample prompt: --s 0 must be between 1 and 1000")]
    [InlineData("a dog --s 1001", "sample prompt: --s 1001 must be between 1 and 1000")]
    [InlineData("a dog --s 1", null)]
    [InlineData("a dog --s 1000", null)]
    [InlineData("a dog --d 99999999999999999999", "sample prompt: --d 99999999999999999999 is out of range")]
    [InlineData("a dog --l", "sample prompt: --l needs a number (got '')")]
    [InlineData("a dog --q 1", "sample prompt: unknown option --q: use --n (negative), --w, --h, --d (seed), --l (cfg), --s (steps)")]
    public void Each_bad_value_is_refused_with_its_bound(string line, string? message)
    {
        if (message is null) { SamplePrompts.Parse(line, 512, 512, 1); return; }
        Assert.Equal(message, Assert.Throws<SdLoraException>(() => SamplePrompts.Parse(line, 512, 512, 1)).Message);
    }

    [Fact]
    public void A_file_of_only_comments_and_blank_lines_is_refused()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllText(dir.File("p.txt"), "# just a note\n\n   \n");
        var e = Assert.Throws<SdLoraException>(() => SamplePrompts.Read(dir.File("p.txt"), 512, 512, 1));
        Assert.Equal($"sample-prompts {dir.File("p.txt")}: no prompts (every line is empty or a # comment)", e.Message);
    }
}
