using System.CommandLine;
using SdLora.Captioning;
using SdLora.Cli.Commands;
using SdLora.Imaging;
using Spectre.Console;
using Xunit;

namespace SdLora.Tests.Captioning;

public sealed class DatasetCaptionerTests(TinyBlip blip) : IClassFixture<TinyBlip>
{
    /// <summary>A folder with a corrupt image, an image that already has a caption, and a new image.</summary>
    private static void MakeDataset(string root)
    {
        File.Copy(Fixtures.CopiedSet("blip/image_a.png"), Path.Combine(root, "new.png"));
        File.Copy(Fixtures.CopiedSet("blip/image_b.png"), Path.Combine(root, "old.png"));
        File.WriteAllText(Path.Combine(root, "old.txt"), "my own caption\n");
        File.WriteAllBytes(Path.Combine(root, "broken.jpg"), [0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3]);
    }

    private static string[] Listing(string root) =>
        Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(root, f)).Order(StringComparer.Ordinal).ToArray();

    [Fact]
    public void Caption_command_writes_one_new_file_and_reports_captioned_kept_failed()
    {
        using var dir = Fixtures.TempDir();
        MakeDataset(dir.Path);
        var output = new StringWriter();
        using var cli = SdLora.Cli.CliContext.Plain(output);
        var root = new RootCommand { CaptionCommand.Create(cli) };
        int rc = root.Parse(["caption", dir.Path, "--model", TinyBlip.ModelDir, "--prefix", "sks dog, ", "--max-length", "20", "--dtype", "fp32"]).Invoke();

        Assert.Equal(0, rc);
        Assert.Equal(["broken.jpg", "new.png", "new.txt", "old.png", "old.txt"], Listing(dir.Path));
        Assert.Equal("my own caption\n", File.ReadAllText(dir.File("old.txt")));
        // Greedy, prompt "a picture of ", min length 5, max length 20: the fixture's greedy_prompt caption (image a).
        Assert.Equal("sks dog, uniform portrait uniform uniform she uniform c portrait play uniform truck in\n", File.ReadAllText(dir.File("new.txt")));
        var text = output.ToString();
        Assert.Contains("1 captioned, 1 kept", text);
        Assert.Contains("1 failed", text);
        Assert.Contains("broken.jpg", text);
    }

    [Fact]
    public void Run_on_kohya_subfolder_layout_writes_captions_beside_images_and_overwrite_replaces()
    {
        using var dir = Fixtures.TempDir();
        var sub = Path.Combine(dir.Path, "5_sks dog");
        Directory.CreateDirectory(sub);
        File.Copy(Fixtures.CopiedSet("blip/image_a.png"), Path.Combine(sub, "00.png"));
        File.WriteAllText(Path.Combine(sub, "00.caption"), "old");
        var reports = new List<CaptionProgress>();
        var options = new BlipCaptionOptions { Generation = new BlipGenerationOptions { MaxLength = 20, MinLength = 5 } };
        var summary = DatasetCaptioner.Run(dir.Path, blip.Captioner, options,
            new DatasetCaptionOptions { Extension = "caption", Overwrite = true }, new SyncProgress<CaptionProgress>(reports.Add));
        Assert.Equal(1, summary.Captioned);
        Assert.Equal("uniform portrait uniform uniform she uniform c portrait play uniform truck in\n", File.ReadAllText(Path.Combine(sub, "00.caption")));
        Assert.Single(reports);
        Assert.Equal(1, reports[0].Total);
    }

    [Fact]
    public void Batched_captions_equal_one_at_a_time_captions()
    {
        var a = RgbImage.Load(Fixtures.CopiedSet("blip/image_a.png"));
        var b = RgbImage.Load(Fixtures.CopiedSet("blip/image_b.png"));
        var options = new BlipCaptionOptions { Generation = new BlipGenerationOptions { MaxLength = 30, MinLength = 5 } };
        var batched = blip.Captioner.Caption([a, b], options);
        Assert.Equal(blip.Captioner.Caption([a], options)[0], batched[0]);
        Assert.Equal(blip.Captioner.Caption([b], options)[0], batched[1]);
    }

    [Fact]
    public void Missing_model_folder_gives_one_line_with_the_files_needed()
    {
        using var dir = Fixtures.TempDir();
        var e = Assert.Throws<SdLoraException>(() => BlipCaptioner.EnsureModelFolder(dir.File("blip")));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains("vocab.txt", e.Message);
        Assert.Contains("Salesforce/blip-image-captioning-large", e.Message);
    }

    [Fact]
    public void Image_extension_is_refused_as_caption_extension()
    {
        var e = Assert.Throws<SdLoraException>(() => DatasetCaptioner.NormalizeExtension(".png"));
        Assert.Contains("use .txt or .caption", e.Message);
        Assert.Equal(".caption", DatasetCaptioner.NormalizeExtension("caption"));
    }
}
