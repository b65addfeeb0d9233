using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using SdLora.Web;
using SdLora.Web.Jobs;
using Xunit;

namespace SdLora.Web.Tests;

/// <summary>
/// One sdlora server for a test: in-process (ASP.NET's TestServer, what WebApplicationFactory wraps) or on a real
/// loopback port for the browser. Its data folder holds the tiny BLIP captioner; the bundled tiny SD model is offered
/// as the checkpoint <c>tiny-sd15</c>. Disposing stops the server the way Ctrl-C does (jobs are told to stop).
/// </summary>
public sealed class WebHarness : IAsyncDisposable
{
    public static string RepoRoot { get; } = FindRepoRoot();
    public static string TinyModel => Path.Combine(RepoRoot, "assets", "tiny-sd15");
    public static string DogPhotos => Path.Combine(RepoRoot, "assets", "dreambooth", "dog");

    public string DataDir { get; }
    public ServeOptions Options { get; }
    public WebApplication App { get; }
    public HttpClient Client { get; }
    public string BaseUrl { get; }
    private readonly bool _ownsData;

    private WebHarness(string dataDir, bool ownsData, ServeOptions options, WebApplication app, HttpClient client, string baseUrl)
    {
        DataDir = dataDir; _ownsData = ownsData; Options = options; App = app; Client = client; BaseUrl = baseUrl;
    }

    public static async Task<WebHarness> Start(string? dataDir = null, Func<ServeOptions, ServeOptions>? tweak = null, bool kestrel = false,
        Action<WebApplicationBuilder>? configure = null)
    {
        bool owns = dataDir is null;
        dataDir ??= Path.Combine(Path.GetTempPath(), "sdlora-web-" + Guid.NewGuid().ToString("N")[..10]);
        var blip = Path.Combine(dataDir, "models", "blip");
        if (!Directory.Exists(blip))
        {
            Directory.CreateDirectory(blip);
            foreach (var f in Directory.EnumerateFiles(Path.Combine(RepoRoot, "tests", "SdLora.Tests", "data", "golden", "blip", "model")))
                File.Copy(f, Path.Combine(blip, Path.GetFileName(f)));
        }
        var options = new ServeOptions
        {
            Data = dataDir, Port = 0, QueuePollInterval = TimeSpan.FromMilliseconds(200),
            ExtraCheckpoints = new Dictionary<string, string> { ["tiny-sd15"] = TinyModel },
        };
        options = tweak?.Invoke(options) ?? options;
        var app = SdLoraServer.Create(options, b => { if (!kestrel) b.WebHost.UseTestServer(); configure?.Invoke(b); });
        await app.StartAsync();
        HttpClient client;
        string baseUrl;
        if (kestrel)
        {
            baseUrl = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First().TrimEnd('/');
            client = new HttpClient { BaseAddress = new Uri(baseUrl) };
        }
        else
        {
            client = app.GetTestClient();
            baseUrl = client.BaseAddress!.ToString().TrimEnd('/');
        }
        return new WebHarness(dataDir, owns, options, app, client, baseUrl);
    }

    public async Task<JsonElement> Json(HttpMethod method, string url, object? body = null, int expect = 200)
    {
        using var request = new HttpRequestMessage(method, url);
        if (body is not null) request.Content = JsonContent.Create(body, options: JobJson.Options);
        using var response = await Client.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True((int)response.StatusCode == expect, $"{method} {url}: expected {expect}, got {(int)response.StatusCode}: {text}");
        return text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone();
    }

    public Task<JsonElement> Get(string url, int expect = 200) => Json(HttpMethod.Get, url, null, expect);
    public Task<JsonElement> Post(string url, object? body = null, int expect = 200) => Json(HttpMethod.Post, url, body ?? new { }, expect);

    /// <summary>Polls a job until it has ended (or <paramref name="timeout"/> passes) and returns its view.</summary>
    public async Task<JsonElement> WaitJob(string id, TimeSpan? timeout = null)
    {
        var until = DateTime.UtcNow + (timeout ?? TimeSpan.FromMinutes(3));
        while (true)
        {
            var job = await Get($"/api/jobs/{id}");
            if (JobStates.IsFinal(job.GetProperty("state").GetString()!)) return job;
            if (DateTime.UtcNow > until) throw new TimeoutException($"job {id} still {job.GetProperty("state")} after the timeout: {job}");
            await Task.Delay(100);
        }
    }

    /// <summary>Waits until <paramref name="condition"/> holds (polling).</summary>
    public static async Task Until(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var until = DateTime.UtcNow + timeout;
        while (!await condition())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException("timed out waiting for " + what);
            await Task.Delay(100);
        }
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
        if (_ownsData) try { Directory.Delete(DataDir, true); } catch (IOException) { }
    }

    public static void DeleteData(string dir)
    {
        try { Directory.Delete(dir, true); } catch (IOException) { }
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "SdLora.slnx"))) return dir.FullName;
        throw new DirectoryNotFoundException("SdLora.slnx not found above " + AppContext.BaseDirectory);
    }
}

/// <summary>Small training settings for the tiny model: a few steps at 64 px, a sample at the end.</summary>
public static class TinyTraining
{
    public static Dictionary<string, string?> Settings(int steps, bool classImages = false) => new()
    {
        ["resolution"] = "64", ["min-bucket-reso"] = "64", ["max-bucket-reso"] = "128", ["max-train-steps"] = steps.ToString(),
        ["network-dim"] = "4", ["network-alpha"] = "2", ["learning-rate"] = "1e-3", ["text-encoder-lr"] = "1e-4", ["num-repeats"] = "1",
        ["instance-prompt"] = "a photo of sks dog", ["class-prompt"] = classImages ? "a photo of a dog" : null, ["num-class-images"] = classImages ? "1" : null,
    };

    public const string SamplePrompt = "a photo of sks dog --d 1 --s 2 --w 64 --h 64";
}
