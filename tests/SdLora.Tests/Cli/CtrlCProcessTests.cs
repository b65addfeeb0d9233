using System.Diagnostics;
using SdLora.Cli;
using Xunit;

namespace SdLora.Tests.Cli;

/// <summary>A real SIGINT to the built program: the first one reaches the command's token (no handler swallows it).</summary>
public class CtrlCProcessTests
{
    [Fact]
    public async Task First_sigint_stops_generate_after_the_current_step_keeping_finished_images()
    {
        Assert.True(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "this test sends POSIX signals");
        using var dir = Fixtures.TempDir();
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet";
        // A process started in the background by a non-interactive shell inherits SIGINT as ignored, and so would the
        // child (.NET keeps an inherited SIG_IGN, as Unix programs should): GNU env resets it to the default first.
        bool gnuEnv = OperatingSystem.IsLinux() && File.Exists("/usr/bin/env");
        var psi = new ProcessStartInfo(gnuEnv ? "/usr/bin/env" : dotnet)
        {
            WorkingDirectory = dir.Path,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (gnuEnv)
        {
            psi.ArgumentList.Add("--default-signal=INT");
            psi.ArgumentList.Add(dotnet);
        }
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "sdlora-cli.dll"));
        // Enough sampling that the run is still going when the signal comes: thousands of steps of the tiny model.
        foreach (var a in new[] { "generate", "-p", "a dog", "-W", "64", "-H", "64", "--steps", "1000", "--batch-count", "5", "--seed", "3", "--out", "images", "--threads", "1" })
            psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stderr = process.StandardError.ReadToEndAsync();
        // Plain output prints the first progress report at once: sampling has begun.
        var output = new System.Text.StringBuilder();
        while (await process.StandardOutput.ReadLineAsync() is { } line)
        {
            output.AppendLine(line);
            if (line.StartsWith("generating", StringComparison.Ordinal)) break;
        }
        if (process.HasExited) Assert.Fail("the run ended before Ctrl-C:\n" + output + await stderr);
        var rest = process.StandardOutput.ReadToEndAsync();

        var killInfo = new ProcessStartInfo("kill") { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "-INT", process.Id.ToString() }) killInfo.ArgumentList.Add(a);
        using (var kill = Process.Start(killInfo)!)
        {
            await kill.WaitForExitAsync();
            Assert.True(kill.ExitCode == 0, "kill -INT failed: " + await kill.StandardError.ReadToEndAsync());
        }
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        bool exited = true;
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException) { exited = false; process.Kill(entireProcessTree: true); }
        output.Append(await rest);
        var all = output + await stderr;

        Assert.True(exited, "still running 2 minutes after Ctrl-C:\n" + all);
        Assert.True(process.ExitCode == ExitCodes.Stopped, $"exit {process.ExitCode}\n{all}");
        Assert.Contains("stopping after the current step", all);
        Assert.Contains("stopped", output.ToString());
        Assert.False(CliRunner.HasStackTrace(all), all);
        // Whatever was finished is a complete PNG; nothing half-written is left.
        foreach (var f in Directory.Exists(Path.Combine(dir.Path, "images")) ? Directory.GetFiles(Path.Combine(dir.Path, "images")) : [])
            Assert.EndsWith(".png", f);
    }
}
