using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using SdLora.Pipelines;
using SdLora.Sampling;
using SdLora.Web.Jobs;

namespace SdLora.Web.Api;

/// <summary>The body of AUTOMATIC1111's <c>POST /sdapi/v1/txt2img</c> (the fields sdlora uses; others are ignored as A1111 ignores unset ones).</summary>
public sealed record A1111Txt2ImgRequest
{
    public string Prompt { get; init; } = "";
    public string NegativePrompt { get; init; } = "";
    public long Seed { get; init; } = -1;
    public string? SamplerName { get; init; }
    /// <summary>Older clients send the sampler here.</summary>
    public string? SamplerIndex { get; init; }
    public int Steps { get; init; } = 20;
    public double CfgScale { get; init; } = 7;
    public int Width { get; init; } = 512;
    public int Height { get; init; } = 512;
    public int BatchSize { get; init; } = 1;
    public int NIter { get; init; } = 1;
    public Dictionary<string, JsonElement>? OverrideSettings { get; init; }
}

/// <summary>
/// The AUTOMATIC1111 API subset existing clients use: txt2img (queued as a generate job; the request waits for it,
/// behind training if need be), progress, interrupt, samplers, sd-models, loras and the <c>sd_model_checkpoint</c> option.
/// </summary>
public static class A1111Api
{
    public static void Map(WebApplication app)
    {
        var api = app.MapGroup("/sdapi/v1").WithTags("a1111");
        api.MapPost("/txt2img", Txt2Img);
        api.MapGet("/progress", Progress);
        api.MapPost("/interrupt", (JobEngine engine) =>
        {
            foreach (var id in engine.RunningJobs)
                if (engine.Store.Get(id)?.Type == GenerateJob.TypeName) engine.Cancel(id);
            return Results.Ok();
        });
        api.MapPost("/skip", (JobEngine engine) => Results.Ok());
        api.MapGet("/samplers", () => SamplerCatalog.Names.Select((n, i) => new { name = n, aliases = new[] { SamplerCatalog.ShortNames[i] }, options = new Dictionary<string, string>() }));
        api.MapGet("/sd-models", (ModelCatalog c) => c.Checkpoints().Select(m => new
        {
            title = m.Name, model_name = Path.GetFileNameWithoutExtension(m.Name), hash = (string?)null, sha256 = (string?)null, filename = m.Path, config = (string?)null,
        }));
        api.MapGet("/loras", (ModelCatalog c) => c.Loras().Select(l => new { name = l.Name, alias = l.Name, path = l.Path, metadata = Metadata(l.Path) }));
        api.MapPost("/refresh-loras", () => Results.Ok());
        api.MapPost("/refresh-checkpoints", () => Results.Ok());
        api.MapGet("/options", (ModelCatalog c) => new Dictionary<string, object?>
        {
            ["sd_model_checkpoint"] = SafeCurrent(c), ["CLIP_stop_at_last_layers"] = 1, ["samples_format"] = "png", ["samples_save"] = true,
        });
        api.MapPost("/options", (Dictionary<string, JsonElement> options, ModelCatalog c) =>
        {
            if (options.TryGetValue("sd_model_checkpoint", out var m)) c.CurrentCheckpointName = m.GetString();
            return Results.Ok();
        });
    }

    private static string? SafeCurrent(ModelCatalog c)
    {
        try { return c.Checkpoint(null).Name; }
        catch (ApiException) { return null; }
    }

    private static IReadOnlyDictionary<string, string> Metadata(string path)
    {
        try { return SdLora.Lora.LoraInspector.Inspect(path).Metadata; }
        catch (Exception e) when (e is SdLoraException or IOException) { return new Dictionary<string, string>(); }
    }

    private static async Task<IResult> Txt2Img(HttpContext ctx, GenerateJob generate, JobEngine engine, DataFolders folders)
    {
        A1111Txt2ImgRequest r;
        try { r = await JsonSerializer.DeserializeAsync<A1111Txt2ImgRequest>(ctx.Request.Body, JobJson.Options, ctx.RequestAborted) ?? throw new JsonException("empty body"); }
        catch (JsonException e) { throw new ApiException(400, "bad JSON: " + e.Message); }
        string? model = null;
        int clipSkip = 1;
        if (r.OverrideSettings is { } o)
        {
            if (o.TryGetValue("sd_model_checkpoint", out var m) && m.ValueKind == JsonValueKind.String) model = m.GetString();
            if (o.TryGetValue("CLIP_stop_at_last_layers", out var cs) && cs.TryGetInt32(out var n)) clipSkip = n;
        }
        var sampler = r.SamplerName ?? r.SamplerIndex ?? "Euler a";
        if (!SamplerCatalog.TryGet(sampler, out _)) throw new ApiException(400, $"sampler '{sampler}' not found: use one of {string.Join(", ", SamplerCatalog.Names)}");
        var args = generate.Check(new GenerateArgs
        {
            Prompt = r.Prompt, NegativePrompt = r.NegativePrompt, Seed = r.Seed, SamplerName = sampler, Steps = r.Steps, CfgScale = r.CfgScale,
            Width = r.Width, Height = r.Height, BatchSize = r.BatchSize, NIter = r.NIter, ClipSkip = clipSkip, Model = model,
        });
        var job = engine.Enqueue(GenerateJob.TypeName, GenerateApi.Title(args), args);
        JobRecord done;
        try { done = await engine.WaitAsync(job.Id, ctx.RequestAborted); }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            // The client went away: its job is not wanted any more.
            try { engine.Cancel(job.Id); } catch (ApiException) { }
            throw;
        }
        if (done.State == JobStates.Failed) throw new ApiException(500, done.Error ?? "generation failed");
        var result = done.Result?.Deserialize<GenerateResult>(JobJson.Options);
        var images = result?.Images ?? [];
        var b64 = images.Select(i => Convert.ToBase64String(File.ReadAllBytes(Path.Combine(folders.Outputs, i.File)))).ToList();
        var first = images.Count > 0 ? GenerationParameters.Parse(images[0].Infotext) : null;
        var info = new Dictionary<string, object?>
        {
            ["prompt"] = r.Prompt, ["all_prompts"] = images.Select(_ => r.Prompt).ToList(), ["negative_prompt"] = r.NegativePrompt,
            ["all_negative_prompts"] = images.Select(_ => r.NegativePrompt).ToList(), ["seed"] = images.Count > 0 ? images[0].Seed : r.Seed,
            ["all_seeds"] = images.Select(i => i.Seed).ToList(), ["subseed"] = -1, ["all_subseeds"] = images.Select(_ => -1).ToList(), ["subseed_strength"] = 0,
            ["width"] = r.Width, ["height"] = r.Height, ["sampler_name"] = SamplerCatalog.A1111Name(sampler), ["cfg_scale"] = r.CfgScale, ["steps"] = r.Steps,
            ["batch_size"] = r.BatchSize, ["clip_skip"] = clipSkip, ["sd_model_name"] = first?.Model, ["sd_model_hash"] = first?.ModelHash,
            ["seed_resize_from_w"] = -1, ["seed_resize_from_h"] = -1, ["index_of_first_image"] = 0, ["infotexts"] = images.Select(i => i.Infotext).ToList(),
            ["styles"] = Array.Empty<string>(), ["job_timestamp"] = done.Created.ToString("yyyyMMddHHmmss", CultureInfo.InvariantCulture),
            ["is_using_inpainting_conditioning"] = false, ["version"] = "sdlora", ["interrupted"] = result?.Cancelled ?? done.State == JobStates.Cancelled,
        };
        var parameters = JsonSerializer.SerializeToElement(r, JobJson.Options);
        return Results.Json(new { images = b64, parameters, info = JsonSerializer.Serialize(info) });
    }

    private static object Progress(JobEngine engine)
    {
        var running = engine.RunningJobs.Select(id => engine.Store.Get(id)).OfType<JobRecord>().FirstOrDefault();
        var queued = engine.Store.All().Count(j => engine.State(j) == JobStates.Queued);
        var p = running is null ? null : engine.Store.EventsAfter(running.Id, 0).LastOrDefault(e => e.Kind == "progress")?.Progress;
        double fraction = p is { Total: > 0 } ? Math.Clamp((double)p.Done / p.Total, 0, 1) : 0;
        double eta = p?.EtaSeconds ?? (running?.Started is { } started && fraction > 0 ? (DateTimeOffset.UtcNow - started).TotalSeconds * (1 - fraction) / fraction : 0);
        return new Dictionary<string, object?>
        {
            ["progress"] = fraction, ["eta_relative"] = eta,
            ["state"] = new Dictionary<string, object?>
            {
                ["skipped"] = false, ["interrupted"] = running?.CancelRequested ?? false, ["job"] = running?.Id ?? "", ["job_count"] = (running is null ? 0 : 1) + queued,
                ["job_timestamp"] = running?.Created.ToString("yyyyMMddHHmmss", CultureInfo.InvariantCulture) ?? "0", ["job_no"] = 0,
                ["sampling_step"] = p?.Phase == "sampling" ? p.Done : 0, ["sampling_steps"] = p?.Phase == "sampling" ? p.Total : 0,
            },
            ["current_image"] = null, ["textinfo"] = running is null ? null : $"{running.Title}: {p?.Phase} {p?.Done}/{p?.Total}",
        };
    }
}
