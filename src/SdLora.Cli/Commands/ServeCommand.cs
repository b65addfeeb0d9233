using System.CommandLine;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;
using SdLora.Web;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora serve</c>: the local web UI and API (datasets, captions, training with a live loss chart, generation, jobs).</summary>
public static class ServeCommand
{
    public const string Name = "serve";

    public static Command Create(CliContext cli)
    {
        var data = new Option<string>("--data") { Description = "folder for datasets, runs, outputs and the job database", DefaultValueFactory = _ => "sdlora-data" };
        var models = new Option<string?>("--models") { Description = "models folder: checkpoints/, lora/, blip/ (default DATA/models)" };
        var port = new Option<int>("--port") { Description = "TCP port", DefaultValueFactory = _ => 7860 };
        var listen = new Option<string>("--listen") { Description = "address to bind; anything but 127.0.0.1/localhost needs --auth or --token", DefaultValueFactory = _ => "127.0.0.1" };
        var auth = new Option<string?>("--auth") { Description = "require HTTP basic sign-in USER:PASS" };
        var token = new Option<string?>("--token") { Description = "require this bearer token (open the page once with ?token=T)" };
        var noWorker = new Option<bool>("--no-worker") { Description = "with --jobs: serve the UI and API only; workers (sdlora worker) run the jobs" };
        var compute = new ComputeArguments();
        var cluster = new ClusterArguments();
        var cmd = new Command(Name, "start the local web UI: datasets, captions, training with a live loss chart, generation, jobs (and an AUTOMATIC1111-compatible API)")
        {
            data, models, port, listen, auth, token, noWorker,
        };
        compute.AddTo(cmd);
        cluster.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            // dtype auto: the server measures (or reads the cached) CPU probe once, when a job first needs it.
            var probe = new Lazy<CpuKernelProbeResult>(() => CliCompute.CachedProbe(cli.Cancellation).Result);
            var options = cluster.Apply(r, new ServeOptions
            {
                CpuProbe = () => probe.Value,
                Data = r.GetValue(data)!, Models = r.GetValue(models), Port = r.GetValue(port), Listen = r.GetValue(listen)!,
                Auth = r.GetValue(auth), Token = r.GetValue(token), Device = r.GetValue(compute.Device)!, DType = r.GetValue(compute.DType)!,
                // The bundled tiny random-weight model is offered too, so every page can be tried without downloads.
                ExtraCheckpoints = BundledCheckpoints(),
                RunJobs = !r.GetValue(noWorker),
            });
            if (options.Jobs is null && !options.RunJobs) throw new SdLoraException("--no-worker needs --jobs postgres://...: with the embedded queue nobody else could run the jobs");
            compute.Read(r, cli);
            var app = SdLoraServer.Create(options);
            await app.StartAsync(ct);
            // Ctrl-C: stop taking requests; a running training job saves its state and resumes at the next start.
            cli.Cancellation.Register(() => app.Lifetime.StopApplication());
            var host = options.Listen is "0.0.0.0" or "::" ? "127.0.0.1" : options.Listen;
            var jobs = options.Jobs is { } url ? $"; jobs: {Web.Jobs.JobStorageFactory.Redact(url)}{(options.RunJobs ? "" : ", run by workers")}" : "";
            cli.Console.Profile.Out.Writer.WriteLine($"sdlora serve: http://{(host.Contains(':') ? $"[{host}]" : host)}:{options.Port}/  (data: {Path.GetFullPath(options.Data)}{jobs}; Ctrl-C stops, running training saves its state)");
            await app.WaitForShutdownAsync(CancellationToken.None);
            return 0;
        });
        return cmd;
    }

    /// <summary>The bundled tiny random-weight model, offered so every page can be tried without downloads (same name on server and workers).</summary>
    public static IReadOnlyDictionary<string, string> BundledCheckpoints() =>
        Directory.Exists(CliOptions.BundledTinyModel)
            ? new Dictionary<string, string> { ["tiny-sd15 (bundled test model)"] = CliOptions.BundledTinyModel }
            : new Dictionary<string, string>();
}
