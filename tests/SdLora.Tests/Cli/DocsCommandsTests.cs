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
    /// <summary>A kind of command not run here, and why.</summary>
    private sealed record NotRun(string What, Func<DocCommand, bool> Matches, string Why);

    /// <summary>Commands not run, with why. Every entry must match a command of the docs (checked), so this list cannot go stale.</summary>
    private static readonly NotRun[] NotRunHere =
    [
        new("dotnet test", c => c.Words is ["dotnet", "test", ..], "the test suite itself: running it from a test would recurse"),
        new("dotnet stryker", c => c.Words is ["dotnet", "stryker", ..],
            "mutation testing builds the library with every mutant and runs the covering tests once per mutant: half an hour to hours per namespace on 2 cores"),
        new("dotnet pack", c => c.Text.StartsWith("dotnet pack ", StringComparison.Ordinal),
            "packs the ~150 MB tool package (minutes of build and compression); done by hand when packaging changes"),
        new("dotnet tool install", c => c.Text.StartsWith("dotnet tool ", StringComparison.Ordinal),
            "installs into the user's ~/.dotnet/tools and needs the package from dotnet pack; the sdlora commands here run the same program"),
        new("train or generate with --model v1-5-pruned-emaonly.safetensors", UsesTheSd15Placeholder,
            "SD1.5-size work (512 px, hundreds of steps) means something only with a real SD1.5 checkpoint, which cannot be " +
            "downloaded here, and takes hours of CPU with any model; the README trains and generates the same way on the bundled tiny model at 128 px"),
        new("sdlora serve", c => SdloraArgs(c) is ["serve", ..],
            "starts a server that runs until it is stopped; tests/SdLora.Web.Tests start the same server in-process and drive it (API and a real Chromium)"),
        new("sdlora bench", c => SdloraArgs(c) is ["bench", ..],
            "the benchmarks build the full-size SD1.5 architecture (1.07 G parameters, a 2 GB checkpoint for load and workflow) and " +
            "take minutes of CPU each; their numbers are docs/PERFORMANCE.md's, and BenchCommandTests runs bench vae and the --json output at a small size"),
        new("sdlora worker", c => SdloraArgs(c) is ["worker", ..],
            "runs until stopped and needs a PostgreSQL queue; tests/SdLora.Web.Tests/ClusterTests.cs starts this command (two workers beside a server) " +
            "against the throwaway PostgreSQL that .ci/run starts"),
        new("dotnet test --filter Category=Cluster", c => c.Text.StartsWith("dotnet test ", StringComparison.Ordinal) && c.Text.Contains("Category=Cluster"),
            "the cluster test itself, which .ci/run runs with its throwaway PostgreSQL; running tests from a test would recurse"),
        new("sdlora demo", c => c.Text == "sdlora demo",
            "the same program run as the README's `dotnet run --project src/SdLora.Cli -c Release -- demo`, which this test runs"),
    ];

    private static bool UsesTheSd15Placeholder(DocCommand c)
    {
        var w = SdloraArgs(c);
        return w is ["train" or "generate", ..]
               && w.Zip(w.Skip(1)).Any(p => p is ("--model" or "-m", "v1-5-pruned-emaonly.safetensors"));
    }

    /// <summary>The sdlora arguments of a command written either way (<c>sdlora ARGS</c> or the README's <c>dotnet run ... -- ARGS</c>); null for other commands.</summary>
    private static string[]? SdloraArgs(DocCommand c)
    {
        var words = c.Words;
        if (words.Length > 0 && words[0] == "sdlora") return words[1..];
        if (words.Length >= DotnetRunPrefix.Length && words[..DotnetRunPrefix.Length].SequenceEqual(DotnetRunPrefix)) return words[DotnetRunPrefix.Length..];
        return null;
    }

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

    private static string? WhyNotRun(DocCommand c) => NotRunHere.FirstOrDefault(n => n.Matches(c))?.Why;

    [Theory]
    [MemberData(nameof(Documents))]
    public void Every_command_runs_as_written_in_order(string document)
    {
        using var dir = Fixtures.TempDir();
        var commands = CommandsOf(document);
        PlaceStandIns(dir.Path, commands);
        var failures = new List<string>();
        var notWritten = new List<string>();   // outputs of the commands not run here
        foreach (var command in commands)
        {
            if (WhyNotRun(command) is not null)
            {
                notWritten.AddRange(OutputsOf(command));
                continue;
            }
            // A command that reads what a command not run here would have written cannot run either (same reason).
            if (command.Words.Skip(1).Any(w => notWritten.Any(o => IsInside(w, o)))) continue;
            if (SdloraArgs(command) is not { } args)
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

    /// <summary>The paths a command writes: the values of <c>--out</c>, <c>--output</c> and <c>-o</c>.</summary>
    private static IEnumerable<string> OutputsOf(DocCommand c) =>
        c.Words.Zip(c.Words.Skip(1)).Where(p => p.First is "--out" or "--output" or "-o").Select(p => p.Second);

    private static bool IsInside(string path, string output)
    {
        string o = output.TrimEnd('/');
        return path == o || path.StartsWith(o + "/", StringComparison.Ordinal);
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
        foreach (var notRun in NotRunHere)
        {
            Assert.False(string.IsNullOrWhiteSpace(notRun.Why), notRun.What);
            Assert.True(all.Any(notRun.Matches), $"NotRunHere lists commands no document has any more: {notRun.What}");
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
    private static void PlaceStandIns(string folder, IReadOnlyList<DocCommand> commands)
    {
        // The docs' commands run from the repository root: its assets/ and examples/ are there (copied when a command uses them).
        foreach (var name in new[] { "assets", "examples" })
        {
            var source = Path.Combine(Fixtures.RepoRoot, name);
            if (Directory.Exists(source) && commands.Any(c => WhyNotRun(c) is null && c.Words.Any(w => w.StartsWith(name + "/", StringComparison.Ordinal))))
                CopyFolder(source, Path.Combine(folder, name));
        }
        // README / captioning.md: my-dog/ = your photos; the bundled DreamBooth dog photos.
        CopyFolder(Path.Combine(Fixtures.RepoRoot, "assets", "dreambooth", "dog"), Path.Combine(folder, "my-dog"));
        // README / captioning.md: models/blip/ = a BLIP captioning model; the tiny BLIP of the golden fixtures.
        CopyFolder(Fixtures.CopiedSet("blip/model"), Path.Combine(folder, "models", "blip"));
        // README / formats.md: v1-5-pruned-emaonly.safetensors = your SD1.x checkpoint; the tiny SD1.5-shaped LDM file (+ its YAML).
        File.Copy(Fixtures.CopiedSet("tiny-sd15-ldm.safetensors"), Path.Combine(folder, "v1-5-pruned-emaonly.safetensors"));
        File.Copy(Fixtures.CopiedSet("tiny-sd15-ldm.yaml"), Path.Combine(folder, "v1-5-pruned-emaonly.yaml"));
        // formats.md: my-lora.safetensors = a LoRA; a kohya LoRA for the tiny model.
        File.Copy(Fixtures.CopiedSet("lora_kohya_tiny.safetensors"), Path.Combine(folder, "my-lora.safetensors"));
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
