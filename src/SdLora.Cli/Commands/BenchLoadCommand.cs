using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>load</c>: peak memory and time of loading a full-size SD1.5 checkpoint into fp32 (measured in a child process).</summary>
public static class BenchLoadCommand
{
        public static Command Create(CliContext cli, string name)
    {
        var dir = new Option<string?>("--dir") { Description = "folder for the synthetic 2 GB SD1.5 checkpoint (default: ~/.cache/sdlora/bench)" };
        var measure = new Option<string?>("--measure") { Description = "internal: load this file in this process and print the result as JSON", Hidden = true };
        var cmd = new Command(name, "measure peak memory and time of loading a full-size SD1.5 checkpoint into fp32") { dir, measure };
        cmd.SetAction(parse =>
        {
            if (parse.GetValue(measure) is { } file)
            {
                Console.WriteLine(JsonSerializer.Serialize(LoadBenchmark.MeasureLoad(file)));
                return 0;
            }
            var folder = parse.GetValue(dir) ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "sdlora", "bench");
            string path = "";
            cli.Console.Status().Start("writing the synthetic SD1.5 checkpoint (once)...", ctx =>
                path = LoadBenchmark.EnsureSd15Checkpoint(folder, new Progress<string>(s => ctx.Status(s))));
            var result = RunChild(path, name);
            var t = new Table().Border(TableBorder.Rounded).AddColumn("load benchmark").AddColumn(new TableColumn("").RightAligned());
            t.AddRow("checkpoint", Markup.Escape(result.CheckpointPath));
            t.AddRow("file size", $"{result.FileBytes / 1e9:F3} GB");
            t.AddRow("parameters", result.Parameters.ToString("N0"));
            t.AddRow("fp32 weights loaded", $"{result.Fp32Bytes / 1e9:F3} GB");
            t.AddRow("RSS before load", $"{result.RssBeforeBytes / 1e9:F3} GB");
            t.AddRow("peak RSS (VmHWM)", $"{result.PeakRssBytes / 1e9:F3} GB");
            t.AddRow("peak / fp32 bytes", $"{result.PeakOverFp32:F3} (target < 1.3)");
            t.AddRow("seconds", $"{result.Seconds:F1}");
            cli.Console.Write(t);
            return 0;
        });
        return cmd;
    }

    private static LoadBenchmarkResult RunChild(string path, string name)
    {
        var exe = Environment.ProcessPath ?? throw new SdLoraException("cannot find this program's path to start the measuring child process");
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, UseShellExecute = false };
        // Under `dotnet sdlora-cli.dll` the process is dotnet itself: pass the assembly first.
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet") psi.ArgumentList.Add(typeof(BenchLoadCommand).Assembly.Location);
        foreach (var a in Environment.GetCommandLineArgs().Skip(1).TakeWhile(a => a != name)) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(name);
        psi.ArgumentList.Add("--measure");
        psi.ArgumentList.Add(path);
        using var child = Process.Start(psi) ?? throw new SdLoraException($"could not start {exe}");
        var output = child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        var last = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault();
        if (child.ExitCode != 0 || last == null) throw new SdLoraException($"the measuring child process failed (exit code {child.ExitCode}); run '{name} --measure {path}' to see why");
        return JsonSerializer.Deserialize<LoadBenchmarkResult>(last) ?? throw new SdLoraException("the measuring child process printed no result");
    }
}
