using SdLora.Pipelines;
using Xunit;

namespace SdLora.Tests.Pipelines;

public class Txt2ImgOptionsTests
{
    public static TheoryData<string, Txt2ImgOptions, string[]> Invalid() => new()
    {
        { "width not a multiple of 8", new Txt2ImgOptions { Width = 100 }, ["100x512"] },
        { "height not a multiple of 8", new Txt2ImgOptions { Height = 100 }, ["512x100"] },
        { "height below 64", new Txt2ImgOptions { Height = 56 }, ["512x56"] },
        { "width below 64", new Txt2ImgOptions { Width = 56 }, ["56x512"] },
        { "no steps", new Txt2ImgOptions { Steps = 0 }, ["steps", "0"] },
        { "too many steps", new Txt2ImgOptions { Steps = 1001 }, ["steps", "1001"] },
        { "negative CFG", new Txt2ImgOptions { CfgScale = -0.5 }, ["cfg", "-0.5"] },
        { "NaN CFG", new Txt2ImgOptions { CfgScale = double.NaN }, ["cfg"] },
        { "batch size 0", new Txt2ImgOptions { BatchSize = 0 }, ["batch"] },
        { "batch count 0", new Txt2ImgOptions { BatchCount = 0 }, ["batch"] },
        { "clip skip 0", new Txt2ImgOptions { ClipSkip = 0 }, ["clip", "0"] },
        { "clip skip 13", new Txt2ImgOptions { ClipSkip = 13 }, ["clip", "13"] },
        { "unknown sampler", new Txt2ImgOptions { Sampler = "Euler b" }, ["Euler b"] },
    };

    [Theory]
    [MemberData(nameof(Invalid))]
    public void Unusable_settings_are_refused_naming_the_setting_and_value(string why, Txt2ImgOptions options, string[] mentions)
    {
        var e = Assert.Throws<SdLoraException>(options.Validate);
        foreach (var m in mentions) Assert.True(e.Message.Contains(m, StringComparison.OrdinalIgnoreCase), $"{why}: '{e.Message}' does not mention '{m}'");
    }

    [Theory]
    [MemberData(nameof(Invalid))]
    public void Messages_name_the_setting_not_a_command_line_flag(string why, Txt2ImgOptions options, string[] mentions)
    {
        // The web forms and the A1111 API show these messages too, where no --flag exists.
        _ = mentions;
        var e = Assert.Throws<SdLoraException>(options.Validate);
        Assert.False(e.Message.Contains("--"), $"{why}: '{e.Message}' spells a command-line flag");
        if (why != "unknown sampler") Assert.False(string.IsNullOrEmpty(e.Setting), $"{why}: the exception names no setting for a form to mark");
    }

    public static TheoryData<string, Txt2ImgOptions> Valid() => new()
    {
        { "defaults", new Txt2ImgOptions() },
        { "smallest size", new Txt2ImgOptions { Width = 64, Height = 64 } },
        { "non-square multiples of 8", new Txt2ImgOptions { Width = 520, Height = 776 } },
        { "one step", new Txt2ImgOptions { Steps = 1 } },
        { "1000 steps", new Txt2ImgOptions { Steps = 1000 } },
        { "CFG 0", new Txt2ImgOptions { CfgScale = 0 } },
        { "clip skip 12", new Txt2ImgOptions { ClipSkip = 12 } },
        { "short sampler name", new Txt2ImgOptions { Sampler = "dpmpp_2m_karras" } },
    };

    [Theory]
    [MemberData(nameof(Valid))]
    public void Boundary_settings_are_accepted(string why, Txt2ImgOptions options)
    {
        var e = Record.Exception(options.Validate);
        Assert.True(e is null, $"{why}: {e?.Message}");
    }
}
