using SdLora.Cli;
using Xunit;

namespace SdLora.Tests.Cli;

public class CaptionCommandTests
{
    private static string TinyBlip => Fixtures.CopiedSet("blip/model");

    private static string Photos(TempDir dir)
    {
        var photos = Path.Combine(dir.Path, "photos");
        Directory.CreateDirectory(photos);
        File.Copy(Fixtures.CopiedSet("blip/image_a.png"), Path.Combine(photos, "a.png"));
        return photos;
    }

    [Fact]
    public void Default_length_is_capped_to_a_small_models_positions_with_a_note_and_an_explicit_longer_one_is_refused()
    {
        using var dir = Fixtures.TempDir();
        var photos = Photos(dir);
        // The tiny BLIP has 64 text positions; the default --max-length is 75.
        var run = CliRunner.Run("caption", photos, "--model", TinyBlip);
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("64 text positions", run.Err);
        Assert.True(File.Exists(Path.Combine(photos, "a.txt")));

        var explicitRun = CliRunner.Run("caption", photos, "--model", TinyBlip, "--max-length", "75", "--overwrite");
        Assert.Equal(ExitCodes.UserError, explicitRun.ExitCode);
        Assert.Contains("--max-length 75", explicitRun.Err);
    }

    [Fact]
    public void Ctrl_c_reaches_caption_it_stops_with_130_and_writes_nothing_more()
    {
        using var dir = Fixtures.TempDir();
        var photos = Photos(dir);
        var run = CliRunner.Run(cli => cli.Interrupt(), "caption", photos, "--model", TinyBlip);
        Assert.True(run.ExitCode == ExitCodes.Stopped, run.ToString());
        Assert.False(File.Exists(Path.Combine(photos, "a.txt")));
        Assert.False(CliRunner.HasStackTrace(run.Out + run.Err));
    }
}
