using SdLora.Imaging;
using SdLora.Pipelines;
using Xunit;

namespace SdLora.Tests.Pipelines;

public class PngParametersTests
{
    [Fact]
    public void Parameters_text_roundtrips_through_png_file()
    {
        using var tmp = Fixtures.TempDir();
        var p = new GenerationParameters
        {
            Prompt = "a photo of sks dog, (masterpiece:1.2)\nsecond line <lora:dog:0.8>",
            NegativePrompt = "blurry, low quality",
            Steps = 25, Sampler = "DPM++ 2M Karras", CfgScale = 7.5, Seed = 1234567890123, Width = 512, Height = 768,
            ModelHash = "6ce0161689", Model = "v1-5-pruned-emaonly", ClipSkip = 2,
            LoraHashes = [new("dog", "0a1b2c3d4e5f"), new("style", "ffeeddccbbaa")],
            Extra = [new("Version", "sdlora 0.1")],
        };
        var pixels = new byte[4 * 2 * 3];
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (byte)(i * 10);
        var path = OutputNaming.Reserve(tmp.Path, p.Seed);
        PngFile.Write(path, new RgbImage(4, 2, pixels), new Dictionary<string, string> { ["parameters"] = p.ToInfotext() });

        var text = PngFile.ReadText(path)["parameters"];
        Assert.Contains("Negative prompt: blurry, low quality", text);
        Assert.Contains("Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234567890123, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: \"dog: 0a1b2c3d4e5f, style: ffeeddccbbaa\"", text);
        var back = GenerationParameters.Parse(text);
        Assert.Equal(p.Prompt, back.Prompt);
        Assert.Equal(p.NegativePrompt, back.NegativePrompt);
        Assert.Equal(p with { LoraHashes = back.LoraHashes, Extra = back.Extra }, back);
        Assert.Equal(p.LoraHashes, back.LoraHashes);
        Assert.Equal(p.Extra, back.Extra);

        var img = RgbImage.Load(path);
        Assert.Equal(pixels, img.Pixels);
    }

    [Fact]
    public void Parses_webui_infotext_with_unicode_via_itxt()
    {
        using var tmp = Fixtures.TempDir();
        var p = new GenerationParameters { Prompt = "猫, café", Seed = 7 };
        var path = Path.Combine(tmp.Path, "x.png");
        PngFile.Write(path, new RgbImage(1, 1, [1, 2, 3]), new Dictionary<string, string> { ["parameters"] = p.ToInfotext() });
        Assert.Equal("猫, café", GenerationParameters.Parse(PngFile.ReadText(path)["parameters"]).Prompt);
    }

    [Fact]
    public void Output_names_continue_numbering_and_never_overwrite()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(Path.Combine(tmp.Path, "00011-5.png"), "");
        File.WriteAllText(Path.Combine(tmp.Path, "notes.txt"), "");
        Assert.Equal(Path.Combine(tmp.Path, "00012-42.png"), OutputNaming.Reserve(tmp.Path, 42));
        Assert.Equal(Path.Combine(tmp.Path, "00013-42.png"), OutputNaming.Reserve(tmp.Path, 42));
    }

    [Fact]
    public void Concurrent_writers_never_get_the_same_number()
    {
        using var tmp = Fixtures.TempDir();
        var paths = new System.Collections.Concurrent.ConcurrentBag<string>();
        // Different seeds give different file names, so only the lock keeps two writers off one number.
        Parallel.For(0, 8, new ParallelOptions { MaxDegreeOfParallelism = 8 }, writer =>
        {
            for (int i = 0; i < 10; i++) paths.Add(OutputNaming.Reserve(tmp.Path, writer * 1000 + i));
        });
        var numbers = paths.Select(p => Path.GetFileName(p)[..5]).ToList();
        Assert.Equal(80, numbers.Count);
        Assert.Equal(80, numbers.Distinct().Count());
        Assert.Equal(Enumerable.Range(0, 80).Select(n => n.ToString("D5")), numbers.Order());
        Assert.Equal(80, Directory.GetFiles(tmp.Path).Length); // the folder holds the images and nothing else
    }
}
