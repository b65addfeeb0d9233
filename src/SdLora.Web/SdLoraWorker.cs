using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using SdLora.Pipelines;
using SdLora.Web.Jobs;

namespace SdLora.Web;

/// <summary>
/// <c>sdlora worker</c>: the job engine of <c>sdlora serve</c> without the web part. It takes jobs from the shared
/// PostgreSQL queue (<c>--jobs postgres://...</c>) for its queues and writes their files under the shared data root.
/// </summary>
public static class SdLoraWorker
{
    public static IHost Create(ServeOptions options)
    {
        if (!options.SharedJobs) throw new SdLoraException("sdlora worker needs the shared queue: add --jobs postgres://USER@HOST:PORT/DB (the same as the server's)");
        if (!options.RunJobs) throw new SdLoraException("a worker runs jobs: leave out --no-worker");
        options.Validate();
        JobStorageFactory.CheckReachable(options);
        var folders = new DataFolders(options);
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = AppContext.BaseDirectory, Args = [] });
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(90));
        SdLoraServer.AddJobServices(builder.Services, options, folders);
        var host = builder.Build();
        host.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopped.Register(() => host.Services.GetRequiredService<ModelHost>().Dispose());
        return host;
    }
}
