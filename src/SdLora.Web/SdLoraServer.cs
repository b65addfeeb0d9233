using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using SdLora.Pipelines;
using SdLora.Web.Api;
using SdLora.Web.Jobs;
using SdLora.Web.Pages;

namespace SdLora.Web;

/// <summary>
/// <c>sdlora serve</c>: one ASP.NET Core app over the library. Pages render on the server with a little plain JS;
/// long work runs as jobs (<see cref="JobEngine"/>); progress streams as Server-Sent Events; <c>/sdapi/v1</c> is the
/// AUTOMATIC1111-compatible subset; <c>/openapi/v1.json</c> describes the JSON API.
/// </summary>
public static class SdLoraServer
{
    /// <param name="configure">Last changes to the builder (tests swap Kestrel for an in-process server here).</param>
    public static WebApplication Create(ServeOptions options, Action<WebApplicationBuilder>? configure = null)
    {
        options.Validate();
        JobStorageFactory.CheckReachable(options);
        // The server hosts the library: libtorch's C++ warnings (NNPACK on CPUs it does not support) are not for its users.
        LibTorchLog.QuietWarnings();
        var folders = new DataFolders(options);
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory, Args = [] });
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(k =>
        {
            if (options.Listen == "localhost") k.ListenLocalhost(options.Port);
            else k.Listen(IPAddress.Parse(options.Listen), options.Port);
            k.Limits.MaxRequestBodySize = options.Uploads.MaxTotalBytes + (1 << 20);
        });
        builder.Services.Configure<FormOptions>(f =>
        {
            f.MultipartBodyLengthLimit = options.Uploads.MaxTotalBytes + (1 << 20);
            f.ValueCountLimit = options.Uploads.MaxFiles + 64;
        });
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(90));
        builder.Services.ConfigureHttpJsonOptions(j =>
        {
            j.SerializerOptions.PropertyNamingPolicy = JobJson.Options.PropertyNamingPolicy;
            j.SerializerOptions.DefaultIgnoreCondition = JobJson.Options.DefaultIgnoreCondition;
            j.SerializerOptions.NumberHandling = JobJson.Options.NumberHandling;
        });
        builder.Services.Configure<RouteHandlerOptions>(r => r.ThrowOnBadRequest = true);
        // Named for the program, not for whichever assembly hosts the server (sdlora-cli, a test host).
        builder.Services.AddOpenApi(o => o.AddDocumentTransformer((document, _, _) =>
        {
            document.Info.Title = "sdlora";
            document.Info.Description = "sdlora's JSON API (datasets, training, generation, jobs) and its AUTOMATIC1111-compatible /sdapi/v1 subset";
            return Task.CompletedTask;
        }));

        AddJobServices(builder.Services, options, folders);
        configure?.Invoke(builder);

        var app = builder.Build();
        app.Use(ErrorsAsJson);
        app.Use(Authenticate(options));
        app.Use(RefuseCrossSite);
        app.MapOpenApi();
        StaticAssets.Map(app);
        JobsApi.Map(app);
        ModelsApi.Map(app);
        DatasetsApi.Map(app);
        GenerateApi.Map(app);
        TrainApi.Map(app);
        A1111Api.Map(app);
        PageRoutes.Map(app);
        app.MapFallback((HttpContext ctx) => Results.Json(new { error = $"{ctx.Request.Method} {ctx.Request.Path} is not part of this server" }, statusCode: 404));
        app.Lifetime.ApplicationStopped.Register(() => app.Services.GetRequiredService<ModelHost>().Dispose());
        return app;
    }

    /// <summary>What runs jobs, shared by <c>serve</c> and <c>worker</c>: folders, the job store, the model host, the job types and the engine.</summary>
    public static void AddJobServices(IServiceCollection services, ServeOptions options, DataFolders folders)
    {
        services.AddSingleton(options);
        services.AddSingleton(folders);
        services.AddSingleton<JobStore>();
        services.AddSingleton(_ => new ModelHost(capacity: 1));
        services.AddSingleton<ModelCatalog>();
        services.AddSingleton<Datasets>();
        services.AddSingleton<Runs>();
        services.AddSingleton<GenerateJob>();
        services.AddSingleton<CaptionJob>();
        services.AddSingleton<MergeJob>();
        services.AddSingleton<TrainJob>();
        services.AddSingleton<IJobHandler>(sp => sp.GetRequiredService<GenerateJob>());
        services.AddSingleton<IJobHandler>(sp => sp.GetRequiredService<CaptionJob>());
        services.AddSingleton<IJobHandler>(sp => sp.GetRequiredService<TrainJob>());
        services.AddSingleton<IJobHandler>(sp => sp.GetRequiredService<MergeJob>());
        services.AddSingleton<JobEngine>();
        services.AddHostedService(sp => sp.GetRequiredService<JobEngine>());
    }

    /// <summary>Every refused request gets a 4xx with <c>{"error": "one line"}</c>; nothing a request sends takes the server down.</summary>
    private static async Task ErrorsAsJson(HttpContext ctx, RequestDelegate next)
    {
        try { await next(ctx); }
        catch (Exception e) when (!ctx.Response.HasStarted && !(e is OperationCanceledException && ctx.RequestAborted.IsCancellationRequested))
        {
            var (status, message) = e switch
            {
                ApiException a => (a.Status, a.Message),
                SdLoraException s => (400, s.Message),
                BadHttpRequestException b => (b.StatusCode, b.Message),
                JsonException j => (400, "bad JSON: " + j.Message),
                InvalidDataException d => (400, d.Message),
                _ => (500, "internal error: " + JobRunner.OneLine(e)),
            };
            if (status >= 500) ctx.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("sdlora").LogError(e, "request failed");
            ctx.Response.Clear();
            ctx.Response.StatusCode = status;
            await ctx.Response.WriteAsJsonAsync(new { error = message.ReplaceLineEndings(" ") });
        }
    }

    /// <summary><c>--auth USER:PASS</c> (HTTP basic) or <c>--token T</c> (bearer header, or <c>?token=T</c> once, kept in a cookie).</summary>
    private static Func<HttpContext, RequestDelegate, Task> Authenticate(ServeOptions options) => async (ctx, next) =>
    {
        if (options.Auth is null && options.Token is null) { await next(ctx); return; }
        string header = ctx.Request.Headers.Authorization.ToString();
        bool ok;
        if (options.Auth is { } auth)
            ok = header.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase) && Same(DecodeBasic(header[6..]), auth);
        else
        {
            var token = options.Token!;
            ok = header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) && Same(header[7..].Trim(), token)
                 || Same(ctx.Request.Cookies["sdlora_token"], token);
            if (!ok && Same(ctx.Request.Query["token"].ToString(), token))
            {
                ok = true;
                ctx.Response.Cookies.Append("sdlora_token", token, new CookieOptions { HttpOnly = true, SameSite = SameSiteMode.Strict, Secure = ctx.Request.IsHttps });
            }
        }
        if (ok) { await next(ctx); return; }
        ctx.Response.StatusCode = 401;
        if (options.Auth is not null) ctx.Response.Headers.WWWAuthenticate = "Basic realm=\"sdlora\", charset=\"UTF-8\"";
        await ctx.Response.WriteAsJsonAsync(new { error = options.Auth is not null ? "sign in: this server was started with --auth" : "this server needs its token: Authorization: Bearer T, or open the page once with ?token=T" });
    };

    private static string DecodeBasic(string b64)
    {
        try { return Encoding.UTF8.GetString(Convert.FromBase64String(b64.Trim())); }
        catch (FormatException) { return ""; }
    }

    private static bool Same(string? a, string b) =>
        a is not null && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(a), Encoding.UTF8.GetBytes(b));

    /// <summary>
    /// State-changing requests from a browser must come from this server's own pages: a cross-site form post or fetch
    /// carries another Origin (or Sec-Fetch-Site: cross-site) and is refused. API clients that send neither header pass.
    /// </summary>
    private static async Task RefuseCrossSite(HttpContext ctx, RequestDelegate next)
    {
        if (HttpMethods.IsGet(ctx.Request.Method) || HttpMethods.IsHead(ctx.Request.Method) || HttpMethods.IsOptions(ctx.Request.Method)) { await next(ctx); return; }
        var origin = ctx.Request.Headers.Origin.ToString();
        var site = ctx.Request.Headers["Sec-Fetch-Site"].ToString();
        bool refused = origin.Length > 0
            ? !string.Equals(origin, $"{ctx.Request.Scheme}://{ctx.Request.Host}", StringComparison.OrdinalIgnoreCase)
            : site is "cross-site" or "same-site";
        if (!refused) { await next(ctx); return; }
        ctx.Response.StatusCode = 403;
        await ctx.Response.WriteAsJsonAsync(new { error = $"cross-site request refused: {ctx.Request.Method} from {(origin.Length > 0 ? origin : site)} to {ctx.Request.Host}; use this server's own pages or a non-browser client" });
    }
}
