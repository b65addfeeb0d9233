using System.Security.Cryptography;
using SdLora.Cli;
using SdLora.IO;
using SdLora.Tests.Checkpoints;
using Xunit;

namespace SdLora.Tests.Cli;

/// <summary>No writing command loses or silently replaces a user's file; bad outputs are found before the work.</summary>
public class OutputSafetyTests
{
    private static string TinyModel => Fixtures.CopiedSet("tiny-sd15");
    private static string TinyLdm => Fixtures.CopiedSet("tiny-sd15-ldm.safetensors");
    private static string TinyLora => Fixtures.CopiedSet("lora_kohya_tiny.safetensors");

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    private static void AssertUserError(CliRun run, string expectedInMessage)
    {
        Assert.True(run.ExitCode == ExitCodes.UserError, run.ToString());
        Assert.Contains(expectedInMessage, run.Err);
        Assert.StartsWith("error: ", run.Err);
        Assert.False(CliRunner.HasStackTrace(run.Out + run.Err), run.ToString());
    }

    [Fact]
    public void Lora_merge_refuses_to_write_over_its_input_lora()
    {
        using var dir = Fixtures.TempDir();
        var lora = dir.File("dog.safetensors");
        File.Copy(TinyLora, lora);
        var before = Hash(lora);

        AssertUserError(CliRunner.Run("lora", "merge", "--model", TinyLdm, "--lora", lora + ":0.8", "--out", lora), "input");
        AssertUserError(CliRunner.Run("lora", "merge", "--model", TinyLdm, "--lora", lora, "--out", lora, "--overwrite"), "input");
        // Through a link to it, too.
        var link = dir.File("link.safetensors");
        File.CreateSymbolicLink(link, lora);
        AssertUserError(CliRunner.Run("lora", "merge", "--model", TinyLdm, "--lora", lora, "--output", link, "--overwrite"), "input");

        Assert.Equal(before, Hash(lora));
    }

    [Fact]
    public void Lora_merge_refuses_an_existing_output_unless_overwrite_and_accepts_out_or_output()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("merged.safetensors");
        File.WriteAllText(output, "something the user made");

        AssertUserError(CliRunner.Run("lora", "merge", "--model", TinyLdm, "--lora", TinyLora, "--out", output), "already exists");
        Assert.Equal("something the user made", File.ReadAllText(output));

        var run = CliRunner.Run("lora", "merge", "--model", TinyLdm, "--lora", TinyLora, "--output", output, "--overwrite");
        Assert.True(run.ExitCode == 0, run.ToString());
        using var merged = SafetensorsFile.Open(output);
        Assert.Contains("sdlora_merged_loras", merged.Metadata.Keys);
    }

    [Fact]
    public void Lora_merge_into_a_diffusers_folder_refuses_a_used_folder_and_replaces_it_with_overwrite()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("merged");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "notes.txt"), "mine");

        AssertUserError(CliRunner.Run("lora", "merge", "--model", TinyModel, "--lora", TinyLora, "--out", output), "not empty");
        Assert.Equal("mine", File.ReadAllText(Path.Combine(output, "notes.txt")));
        // The model folder itself, or a folder inside it, is never an output.
        AssertUserError(CliRunner.Run("lora", "merge", "--model", TinyModel, "--lora", TinyLora, "--out", TinyModel, "--overwrite"), "input");

        var run = CliRunner.Run("lora", "merge", "--model", TinyModel, "--lora", TinyLora, "--out", output, "--overwrite");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.True(File.Exists(Path.Combine(output, "unet", "diffusion_pytorch_model.safetensors")));
        Assert.False(File.Exists(Path.Combine(output, "notes.txt")));
        Assert.Equal(["merged"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    [Fact]
    public void Lora_resize_refuses_its_input_and_an_existing_output_unless_overwrite()
    {
        using var dir = Fixtures.TempDir();
        var lora = dir.File("dog.safetensors");
        File.Copy(TinyLora, lora);
        var before = Hash(lora);
        AssertUserError(CliRunner.Run("lora", "resize", lora, "--rank", "2", "--out", lora, "--overwrite"), "input");
        Assert.Equal(before, Hash(lora));

        var output = dir.File("small.safetensors");
        File.WriteAllText(output, "keep me");
        AssertUserError(CliRunner.Run("lora", "resize", lora, "--rank", "2", "--out", output), "already exists");
        Assert.Equal("keep me", File.ReadAllText(output));
        var run = CliRunner.Run("lora", "resize", lora, "--rank", "2", "-o", output, "--overwrite");
        Assert.True(run.ExitCode == 0, run.ToString());
        using var resized = SafetensorsFile.Open(output);
        Assert.Equal("2", resized.Metadata["ss_network_dim"]);
    }

    [Fact]
    public void Lora_extract_refuses_to_write_over_a_model()
    {
        using var dir = Fixtures.TempDir();
        var tuned = dir.File("tuned.safetensors");
        File.Copy(TinyLdm, tuned);
        var before = Hash(tuned);
        AssertUserError(CliRunner.Run("lora", "extract", "--base", TinyLdm, "--tuned", tuned, "--out", tuned, "--overwrite"), "input");
        Assert.Equal(before, Hash(tuned));
    }

    [Fact]
    public void Unwritable_output_is_one_line_exit_2_before_any_work()
    {
        using var dir = Fixtures.TempDir();
        var file = dir.File("a-file");
        File.WriteAllText(file, "x");
        string blocked = Path.Combine(file, "sub"); // never creatable: its parent is a file
        AssertUserError(CliRunner.Run("generate", "-p", "a dog", "--model", TinyModel, "--steps", "1", "-W", "64", "-H", "64", "--out", blocked), "cannot write");
        AssertUserError(CliRunner.Run("lora", "resize", TinyLora, "--out", Path.Combine(blocked, "x.safetensors")), "cannot write");
        AssertUserError(CliRunner.Run("lora", "merge", "--model", TinyLdm, "--lora", TinyLora, "--out", Path.Combine(blocked, "m.safetensors")), "cannot write");
        if (OperatingSystem.IsLinux())
        {
            var run = CliRunner.Run("generate", "-p", "a dog", "--model", TinyModel, "--steps", "1", "-W", "64", "-H", "64", "--out", "/proc/x");
            AssertUserError(run, "/proc/x");
            Assert.DoesNotContain("loading", run.Out); // refused before the model was loaded
            AssertUserError(CliRunner.Run("lora", "resize", TinyLora, "--out", "/proc/x.safetensors"), "cannot write");
        }
    }

    [Fact]
    public void Generate_output_naming_an_existing_file_is_refused_before_loading()
    {
        using var dir = Fixtures.TempDir();
        var file = dir.File("image.png");
        File.WriteAllText(file, "not a folder");
        var run = CliRunner.Run("generate", "-p", "a dog", "--model", TinyModel, "--steps", "1", "-W", "64", "-H", "64", "--out", file);
        AssertUserError(run, "is a file");
        Assert.Equal("not a folder", File.ReadAllText(file));
    }

    [Fact]
    public void Generate_writes_numbered_images_into_out_and_never_replaces_one()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("images");
        string[] args = ["generate", "-p", "a dog", "--model", TinyModel, "--steps", "2", "-W", "64", "-H", "64", "--seed", "5", "--output", output];
        Assert.Equal(0, CliRunner.Run(args).ExitCode);
        var first = Directory.GetFiles(output).Single();
        var firstHash = Hash(first);
        Assert.Equal(0, CliRunner.Run(args).ExitCode);
        Assert.Equal(2, Directory.GetFiles(output).Length);
        Assert.Equal(firstHash, Hash(first));
    }

    [Fact]
    public void Stopped_lora_resize_exits_130_and_writes_nothing()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("small.safetensors");
        var run = CliRunner.Run(cli => cli.Interrupt(), "lora", "resize", TinyLora, "--rank", "2", "--out", output);
        Assert.True(run.ExitCode == ExitCodes.Stopped, run.ToString());
        Assert.False(File.Exists(output));
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path)); // no temp file left either
    }

    [Fact]
    public void Stopped_generate_keeps_finished_images_and_exits_130()
    {
        using var dir = Fixtures.TempDir();
        var output = dir.File("images");
        var run = CliRunner.Run(cli => cli.Interrupt(), "generate", "-p", "a dog", "--model", TinyModel, "--steps", "2", "-W", "64", "-H", "64", "--out", output);
        Assert.True(run.ExitCode == ExitCodes.Stopped, run.ToString());
        Assert.Contains("stopped", run.Out);
    }

    [Fact]
    public void Lora_merge_and_extract_read_ckpt_models()
    {
        using var dir = Fixtures.TempDir();
        var ckpt = dir.File("tiny.ckpt");
        using (var st = SafetensorsFile.Open(TinyLdm))
        {
            var tensors = st.Keys.Select(k => (k, st.Load(k))).ToList();
            TorchZipWriter.WriteStateDict(ckpt, tensors, wrap: true);
            foreach (var (_, t) in tensors) t.Dispose();
        }
        var fromCkpt = dir.File("from-ckpt.safetensors");
        var fromSafetensors = dir.File("from-safetensors.safetensors");
        var run = CliRunner.Run("lora", "merge", "--model", ckpt, "--lora", TinyLora + ":0.7", "--out", fromCkpt);
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(0, CliRunner.Run("lora", "merge", "--model", TinyLdm, "--lora", TinyLora + ":0.7", "--out", fromSafetensors).ExitCode);
        using (var a = SafetensorsFile.Open(fromCkpt))
        using (var b = SafetensorsFile.Open(fromSafetensors))
        {
            Assert.Equal(b.Keys.Order(StringComparer.Ordinal), a.Keys.Order(StringComparer.Ordinal));
            const string key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
            using var ta = a.Load(key);
            using var tb = b.Load(key);
            Assert.True(TorchSharp.torch.equal(ta, tb).all().item<bool>(), "the .ckpt and .safetensors merges differ");
        }

        var lora = dir.File("extracted.safetensors");
        run = CliRunner.Run("lora", "extract", "--base", ckpt, "--tuned", fromSafetensors, "--rank", "2", "--out", lora);
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.True(File.Exists(lora));

        AssertUserError(CliRunner.Run("lora", "merge", "--model", ckpt, "--lora", TinyLora, "--out", dir.File("merged.ckpt")), ".safetensors");
    }

    [Fact]
    public void A_text_file_named_ckpt_is_reported_as_what_it_is()
    {
        using var dir = Fixtures.TempDir();
        var fake = dir.File("model.ckpt");
        File.WriteAllText(fake, "<!DOCTYPE html><html><body>404 Not Found</body></html>\n");
        foreach (var args in new[]
        {
            new[] { "model", "inspect", fake },
            ["lora", "merge", "--model", fake, "--lora", TinyLora, "--out", dir.File("m.safetensors")],
            ["lora", "extract", "--base", fake, "--tuned", TinyLdm, "--out", dir.File("l.safetensors")],
            ["generate", "-p", "x", "--model", fake, "--out", dir.File("img")],
        })
        {
            var run = CliRunner.Run(args);
            AssertUserError(run, "not a PyTorch checkpoint");
            Assert.Contains("HTML", run.Err);
            Assert.DoesNotContain("safetensors file", run.Err);
        }
    }

    [Fact]
    public void An_image_passed_as_a_model_is_reported_as_an_image()
    {
        var photo = Path.Combine(Fixtures.RepoRoot, "assets", "dreambooth", "dog", "00.jpg");
        var run = CliRunner.Run("model", "inspect", photo);
        AssertUserError(run, "is a JPEG image");
        Assert.DoesNotContain("safetensors file", run.Err);
    }

    [Fact]
    public void Caption_on_a_folder_without_images_fails_before_loading_the_model()
    {
        using var dir = Fixtures.TempDir();
        File.WriteAllText(dir.File("notes.txt"), "no photos here");
        var run = CliRunner.Run("caption", dir.Path, "--model", dir.File("no-blip-here"));
        AssertUserError(run, "holds no images");
    }
}
