using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SdLora.Benchmarks;
using Spectre.Console;

namespace SdLora.Cli.Commands;

/// <summary><c>load</c>: peak memory and time of loading a full-size SD1.5 checkpoint (measured in a child process).</summary>
public static class BenchLoadCommand
{
    public static Command Create(CliContext cli, string name)
    {
        var dir = new Option<string?>("--dir") { Description = "folder for the synthetic 2 GB SD1.5 checkpoint (default: the bench folder in sdlora's user cache, ~/.cache/sdlora/bench)" };
        var dtype = BenchHost.DTypeOption("precision the model is loaded into: auto (as generate picks it; default), fp32, bf16 or fp16");
        var json = BenchJson.Option();
        var measure = new Option<string?>("--measure") { Description = "internal: load this file in this process and print the result as JSON", Hidden = true };
        var cmd = new Command(name, "measure peak memory and time of loading a full-size SD1.5 checkpoint (fp16 file) into the chosen precision") { dir, dtype, json, measure };
        cmd.SetAction(parse =>
        {
            if (parse.GetValue(measure) is { } file)
            {
                var compute = CliCompute.Resolve("cpu", parse.GetValue(dtype)!, cli, _ => { });
                Console.WriteLine(JsonSerializer.Serialize(LoadBenchmark.MeasureLoad(file, compute)));
                return 0;
            }
            bool asJson = parse.GetValue(json);
            var chosen = CliCompute.Resolve("cpu", parse.GetValue(dtype)!, cli, BenchJson.Note(cli, asJson));
            var folder = parse.GetValue(dir) ?? Path.Combine(UserCache.Folder, "bench");
            string path;
            if (asJson) path = LoadBenchmark.EnsureSd15Checkpoint(folder, BenchJson.Progress(cli, true));
            else
            {
                path = "";
                cli.Console.Status().Start("writing the synthetic SD1.5 checkpoint (once)...", ctx =>
                    path = LoadBenchmark.EnsureSd15Checkpoint(folder, new Progress<string>(s => ctx.Status(s))));
            }
            var result = RunChild(path, name, ComputeOptions.DTypeName(chosen.DType));
            if (asJson)
            {
                BenchJson.Write(parse, new()
                {
                    ["benchmark"] = "load",
                    ["what"] = "StableDiffusionModel.Load of a full-size SD1.5 single-file checkpoint (LDM layout, fp16, random weights) in a fresh process, page cache as the previous run left it",
                    ["checkpoint"] = result.CheckpointPath,
                    ["file_bytes"] = result.FileBytes,
                    ["parameters"] = result.Parameters,
                    ["weight_bytes"] = result.WeightBytes,
                    ["seconds"] = result.Seconds,
                    ["rss_before_bytes"] = result.RssBeforeBytes,
                    ["rss_after_bytes"] = result.RssAfterBytes,
                    ["peak_rss_bytes"] = result.PeakRssBytes,
                    ["peak_over_weight_bytes"] = result.PeakOverWeights,
                    ["gflop"] = null,
                    ["efficiency"] = null,
                }, BenchJson.Precision(chosen, parse.GetValue(dtype)!));
                return 0;
            }
            var t = new Table().Border(TableBorder.Rounded).AddColumn("load benchmark").AddColumn(new TableColumn("").RightAligned());
            t.AddRow("checkpoint", Markup.Escape(result.CheckpointPath));
            t.AddRow("file size", $"{result.FileBytes / 1e9:F3} GB");
            t.AddRow("parameters", result.Parameters.ToString("N0"));
            t.AddRow("loaded as", Markup.Escape(chosen.Describe()));
            t.AddRow("weights held", $"{result.WeightBytes / 1e9:F3} GB");
            t.AddRow("RSS before load", $"{result.RssBeforeBytes / 1e9:F3} GB");
            t.AddRow("RSS after load", $"{result.RssAfterBytes / 1e9:F3} GB");
            t.AddRow("peak RSS (VmHWM)", $"{result.PeakRssBytes / 1e9:F3} GB");
            t.AddRow("peak / weight bytes", $"{result.PeakOverWeights:F3} (target < 1.3)");
            t.AddRow("seconds", $"{result.Seconds:F2}");
            cli.Console.Write(t);
            return 0;
        });
        return cmd;
    }

    private static LoadBenchmarkResult RunChild(string path, string name, string dtype)
    {
        var exe = Environment.ProcessPath ?? throw new SdLoraException("cannot find this program's path to start the measuring child process");
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, UseShellExecute = false };
        // Under `dotnet sdlora-cli.dll` the process is dotnet itself: pass the assembly first.
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet") psi.ArgumentList.Add(typeof(BenchLoadCommand).Assembly.Location);
        foreach (var a in Environment.GetCommandLineArgs().Skip(1).TakeWhile(a => a != name)) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(name);
        psi.ArgumentList.Add("--dtype");
        psi.ArgumentList.Add(dtype);
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
