using System.CommandLine;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;
using SdLora.Web;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora serve</c>: the local web UI and API (datasets, captions, training with a live loss chart, generation, jobs).</summary>
public static class ServeCommand
{
    public static Command Create(CliContext cli)
    {
        var data = new Option<string>("--data") { Description = "folder for datasets, runs, outputs and the job database", DefaultValueFactory = _ => "sdlora-data" };
        var models = new Option<string?>("--models") { Description = "models folder: checkpoints/, lora/, blip/ (default DATA/models)" };
        var port = new Option<int>("--port") { Description = "TCP port", DefaultValueFactory = _ => 7860 };
        var listen = new Option<string>("--listen") { Description = "address to bind; anything but 127.0.0.1/localhost needs --auth or --token", DefaultValueFactory = _ => "127.0.0.1" };
        var auth = new Option<string?>("--auth") { Description = "require HTTP basic sign-in USER:PASS" };
        var token = new Option<string?>("--token") { Description = "require this bearer token (open the page once with ?token=T)" };
        var compute = new ComputeArguments();
        var cmd = new Command("serve", "start the local web UI: datasets, captions, training with a live loss chart, generation, jobs (and an AUTOMATIC1111-compatible API)")
        {
            data, models, port, listen, auth, token,
        };
        compute.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            var options = new ServeOptions
            {
                Data = r.GetValue(data)!, Models = r.GetValue(models), Port = r.GetValue(port), Listen = r.GetValue(listen)!,
                Auth = r.GetValue(auth), Token = r.GetValue(token), Device = r.GetValue(compute.Device)!, DType = r.GetValue(compute.DType)!,
                // The bundled tiny random-weight model is offered too, so every page can be tried without downloads.
                ExtraCheckpoints = Directory.Exists(CliOptions.BundledTinyModel)
                    ? new Dictionary<string, string> { ["tiny-sd15 (bundled test model)"] = CliOptions.BundledTinyModel }
                    : new Dictionary<string, string>(),
            };
            compute.Read(r, cli);
            var app = SdLoraServer.Create(options);
            await app.StartAsync(ct);
            // Ctrl-C: stop taking requests; a running training job saves its state and resumes at the next start.
            cli.Cancellation.Register(() => app.Lifetime.StopApplication());
            var host = options.Listen is "0.0.0.0" or "::" ? "127.0.0.1" : options.Listen;
            cli.Console.Profile.Out.Writer.WriteLine($"sdlora serve: http://{(host.Contains(':') ? $"[{host}]" : host)}:{options.Port}/  (data: {Path.GetFullPath(options.Data)}; Ctrl-C stops, running training saves its state)");
            await app.WaitForShutdownAsync(CancellationToken.None);
            return 0;
        });
        return cmd;
    }
}
