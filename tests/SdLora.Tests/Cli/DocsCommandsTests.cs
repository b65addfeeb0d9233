using System.Diagnostics;
using TorchSharp;
using Xunit;

namespace SdLora.Tests.Cli;

/// <summary>
/// Every command in README.md and docs/*.md runs as written, in order, one fresh folder per document, against the
/// built program. The folder holds stand-ins for the placeholders the docs name (the bundled tiny model for your SD1.5
/// checkpoint, the bundled dog photos for your photos, a tiny BLIP for your BLIP model); nothing in a command is
/// rewritten. Commands that cannot run here are listed below with the reason.
/// </summary>
[Trait("Category", "Docs")]
public class DocsCommandsTests
{
    /// <summary>Commands not run, with why. Every entry must still occur in the docs (checked), so this list cannot go stale.</summary>
    private static readonly Dictionary<string, string> NotRunHere = new()
    {
        ["dotnet test"] = "the test suite itself: running it from a test would recurse",
        ["dotnet pack src/SdLora.Cli -o nupkg"] =
            "packs the ~150 MB tool package (minutes of build and compression); done by hand when packaging changes",
        ["dotnet tool install --global --add-source nupkg sdlora"] =
            "installs into the user's ~/.dotnet/tools and needs the package from dotnet pack; the sdlora commands here run the same program",
        ["sdlora train --model v1-5-pruned-emaonly.safetensors --data my-dog/ --instance-prompt \"a photo of sks dog\" --class-prompt \"a photo of a dog\" --resolution 512 --max-train-steps 800 --output-name dog --out runs/dog"] =
            "SD1.5-size training (512 px, 800 steps) needs a real SD1.5 checkpoint, which cannot be downloaded here, and hours of CPU; the README runs the same flags at 128 px",
        ["sdlora generate --model v1-5-pruned-emaonly.safetensors -p \"a photo of sks dog on a street <lora:dog:0.8>\" --lora-dir runs/dog --sampler \"DPM++ 2M Karras\" --steps 25 --seed 1 --out outputs"] =
            "needs a real SD1.5 checkpoint and the LoRA trained from it at 512 px (the line above); the README's 128 px generate runs",
        ["sdlora train --model v1-5-pruned-emaonly.safetensors --data assets/dreambooth/dog --instance-prompt \"a photo of sks dog\" --class-prompt \"a photo of a dog\" --resolution 512 --max-train-steps 800 --network-dim 32 --network-alpha 16 --learning-rate 1e-4 --text-encoder-lr 5e-5 --sample-prompts examples/prompts.txt --sample-every-n-epochs 1 --save-every-n-epochs 1 --out runs/sks-dog"] =
            "SD1.5-size training (512 px, 800 steps, samples every epoch) needs a real SD1.5 checkpoint, which cannot be downloaded here, and hours of CPU",
        ["sdlora train --config examples/train.toml --model v1-5-pruned-emaonly.safetensors --max-train-steps 400"] =
            "examples/train.toml is an SD1.5 recipe (512 px, prior preservation): it needs a real SD1.5 checkpoint and hours of CPU; TrainingSettingsTests loads and validates the file itself",
        ["sdlora demo"] = "the same program run as the README's `dotnet run --project src/SdLora.Cli -c Release -- demo`, which this test runs",
    };

    /// <summary>Command prefixes not run, with why.</summary>
    private static readonly Dictionary<string, string> NotRunHerePrefixes = new()
    {
        ["sdlora serve"] = "starts a server that runs until it is stopped; tests/SdLora.Web.Tests start the same server in-process and drive it (API and a real Chromium)",
        ["sdlora bench "] = "benchmarks build full-size SD1.5 networks (GBs of memory, minutes per step on a CPU) and print numbers, not files",
    };

    /// <summary><c>dotnet run --project src/SdLora.Cli -c Release --</c> is the README's way to run sdlora without installing it.</summary>
    private static readonly string[] DotnetRunPrefix = ["dotnet", "run", "--project", "src/SdLora.Cli", "-c", "Release", "--"];

    /// <summary>README.md and docs/*.md, relative to the repository root.</summary>
    private static List<string> DocumentNames() =>
    [
        "README.md",
        .. Directory.GetFiles(Path.Combine(Fixtures.RepoRoot, "docs"), "*.md").Order(StringComparer.Ordinal)
            .Select(f => Path.GetRelativePath(Fixtures.RepoRoot, f).Replace('\\', '/')),
    ];

    public static TheoryData<string> Documents() => new(DocumentNames());

    private static List<DocCommand> CommandsOf(string document) =>
        DocCommands.Extract(File.ReadAllText(Path.Combine(Fixtures.RepoRoot, document)), document);

    private static string? WhyNotRun(DocCommand c) =>
        NotRunHere.TryGetValue(c.Text, out var why) ? why
        : NotRunHerePrefixes.FirstOrDefault(p => c.Text.StartsWith(p.Key, StringComparison.Ordinal)).Value;

    [Theory]
    [MemberData(nameof(Documents))]
    public void Every_command_runs_as_written_in_order(string document)
    {
        using var dir = Fixtures.TempDir();
        PlaceStandIns(dir.Path);
        var failures = new List<string>();
        foreach (var command in CommandsOf(document))
        {
            if (WhyNotRun(command) is not null) continue;
            var words = command.Words;
            string[] args;
            if (words[0] == "sdlora") args = words[1..];
            else if (words.Length >= DotnetRunPrefix.Length && words[..DotnetRunPrefix.Length].SequenceEqual(DotnetRunPrefix)) args = words[DotnetRunPrefix.Length..];
            else
            {
                failures.Add($"{command}\n  not an sdlora command: run it here or list it in NotRunHere with the reason");
                continue;
            }
            var (code, output) = RunSdlora(args, dir.Path);
            if (code != 0 || CliRunner.HasStackTrace(output))
                failures.Add($"{command}\n  exit {code}\n{Indent(output)}");
        }
        Assert.True(failures.Count == 0, string.Join("\n\n", failures));
        if (document == "README.md") AssertReadmeGuideChained(dir.Path);
    }

    /// <summary>The guide's generate used the LoRA its train step wrote: <c>&lt;lora:dog:0.8&gt;</c> is <c>runs/dog/dog.safetensors</c>.</summary>
    private static void AssertReadmeGuideChained(string folder)
    {
        Assert.True(File.Exists(Path.Combine(folder, "runs", "dog", "dog.safetensors")), "the guide's train step wrote no runs/dog/dog.safetensors");
        var png = Path.Combine(folder, "outputs", "00000-1.png");
        Assert.True(File.Exists(png), "the guide's generate step wrote no outputs/00000-1.png");
        Assert.Contains("Lora hashes: \"dog: ", SdLora.Imaging.PngFile.ReadText(png)["parameters"]);
        Assert.True(File.Exists(Path.Combine(folder, "my-dog", "00.txt")), "the guide's caption step wrote no my-dog/00.txt");
    }

    [Fact]
    public void Commands_not_run_here_are_in_the_docs_and_say_why()
    {
        var all = DocumentNames().SelectMany(CommandsOf).ToList();
        foreach (var (command, why) in NotRunHere)
        {
            Assert.False(string.IsNullOrWhiteSpace(why), command);
            Assert.True(all.Any(c => c.Text == command), $"NotRunHere lists a command no document has any more: {command}");
        }
        // The docs do hold commands that run: extraction found the guide.
        Assert.Contains(all, c => c.Text.StartsWith("sdlora generate -p ", StringComparison.Ordinal) && WhyNotRun(c) is null);
    }

    [Fact]
    public void Extraction_reads_fenced_blocks_continuations_comments_and_table_rows()
    {
        const string markdown = """
            Text `sdlora prose --not-a-command`.

            ```bash
            $ sdlora tokenize "a # b" --json   # trailing comment
            sdlora train --data my-dog/ \
              --instance-prompt 'a photo of sks dog'
            ls my-dog/
            ```

            | step | command |
            | --- | --- |
            | count | `sdlora tokenize "x y"` (`--json` for ids) |

            ```toml
            data = "photos"
            ```
            """;
        var commands = DocCommands.Extract(markdown, "x.md");
        Assert.Equal(["sdlora tokenize \"a # b\" --json", "sdlora train --data my-dog/ --instance-prompt 'a photo of sks dog'", "sdlora tokenize \"x y\""],
            commands.Select(c => c.Text));
        Assert.Equal([4, 5, 12], commands.Select(c => c.Line));
        Assert.Equal(["sdlora", "tokenize", "a # b", "--json"], commands[0].Words);
        Assert.Equal(["sdlora", "train", "--data", "my-dog/", "--instance-prompt", "a photo of sks dog"], commands[1].Words);
        Assert.Equal(["a", "b\"c", "d e", "f"], DocCommands.SplitWords("a \"b\\\"c\" d\\ e f"));
    }

    /// <summary>Stand-ins for the files the docs' placeholders name, so the commands run with nothing rewritten.</summary>
    private static void PlaceStandIns(string folder)
    {
        // README / captioning.md: my-dog/ = your photos; the bundled DreamBooth dog photos.
        CopyFolder(Path.Combine(Fixtures.RepoRoot, "assets", "dreambooth", "dog"), Path.Combine(folder, "my-dog"));
        // README / captioning.md: models/blip/ = a BLIP captioning model; the tiny BLIP of the golden fixtures.
        CopyFolder(Fixtures.Golden("blip/model"), Path.Combine(folder, "models", "blip"));
        // README / formats.md: v1-5-pruned-emaonly.safetensors = your SD1.x checkpoint; the tiny SD1.5-shaped LDM file (+ its YAML).
        File.Copy(Fixtures.Golden("tiny-sd15-ldm.safetensors"), Path.Combine(folder, "v1-5-pruned-emaonly.safetensors"));
        File.Copy(Fixtures.Golden("tiny-sd15-ldm.yaml"), Path.Combine(folder, "v1-5-pruned-emaonly.yaml"));
        // formats.md: my-lora.safetensors = a LoRA; a kohya LoRA for the tiny model.
        File.Copy(Fixtures.Golden("lora_kohya_tiny.safetensors"), Path.Combine(folder, "my-lora.safetensors"));
    }

    private static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
        {
            var dest = Path.Combine(to, Path.GetRelativePath(from, f));
            Directory.CreateDirectory(Path.GetDirectoryName(dest)!);
            File.Copy(f, dest);
        }
    }

    /// <summary>Runs the built program (<c>dotnet sdlora-cli.dll ARGS</c>) in <paramref name="workingDirectory"/> with output redirected, as a pipe would.</summary>
    private static (int Code, string Output) RunSdlora(string[] args, string workingDirectory)
    {
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "sdlora-cli.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        // The same torch thread count as this test run (the machine may be busy; more threads than cores crawl).
        psi.Environment["OMP_NUM_THREADS"] = torch.get_num_threads().ToString();
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(10)))
        {
            process.Kill(entireProcessTree: true);
            return (-1, "timed out after 10 minutes\n" + stdout.Result + stderr.Result);
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    private static string Indent(string text) =>
        string.Join("\n", text.TrimEnd().Split('\n').TakeLast(15).Select(l => "    " + l));
}
