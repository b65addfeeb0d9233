using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using SdLora.Web.Jobs;

namespace SdLora.Web.Api;

/// <summary>A job as the API shows it: the record, its live state and its last progress.</summary>
public sealed record JobView(string Id, string Type, string Title, string State, DateTimeOffset Created, DateTimeOffset? Started, DateTimeOffset? Finished,
    int Attempts, string? Error, JsonElement? Result, string? Run, JobProgress? Progress, string? Queue = null, string? Worker = null, IReadOnlyList<string>? Files = null);

/// <summary><c>/api/jobs</c>: the queue and its history, one job, cancel, the log, and live events (SSE).</summary>
public static class JobsApi
{
    public static JobView View(JobEngine engine, JobRecord r)
    {
        var state = engine.State(r);
        var progress = JobStates.IsFinal(state) && state != JobStates.Cancelled ? null
            : engine.Store.EventsAfter(r.Id, 0).LastOrDefault(e => e.Kind == "progress")?.Progress;
        return new JobView(r.Id, r.Type, r.Title, state, r.Created, r.Started, r.Finished, r.Attempts, r.Error, r.Result, r.Run, progress, r.Queue, r.Worker, r.Files);
    }

    public static void Map(WebApplication app)
    {
        var api = app.MapGroup("/api/jobs").WithTags("jobs");
        api.MapGet("", (JobEngine engine, int? limit) =>
            engine.Store.All().Take(Math.Clamp(limit ?? 100, 1, 1000)).Select(r => View(engine, r)).ToList());
        api.MapGet("/{id}", (string id, JobEngine engine) => View(engine, Get(engine, id)));
        app.MapGet("/api/workers", (JobEngine engine) => engine.Workers()).WithTags("jobs")
            .WithDescription("The processes taking jobs from this queue (this server and, with --jobs postgres://..., every sdlora worker): name, queues, last heartbeat.");
        api.MapPost("/{id}/cancel", (string id, JobEngine engine) => View(engine, engine.Cancel(Get(engine, id).Id)));
        api.MapGet("/{id}/log", (string id, JobEngine engine) =>
            Results.Text(string.Join("\n", engine.Store.EventsAfter(Get(engine, id).Id, 0).Where(e => e.Kind == "log")
                .Select(e => $"{e.Time:yyyy-MM-dd HH:mm:ss} {e.Message}")) + "\n", "text/plain; charset=utf-8"));
        api.MapGet("/{id}/events", Events).WithDescription("Server-Sent Events: log, progress and state records; ends with an 'end' event when the job has ended.");
    }

    private static JobRecord Get(JobEngine engine, string id) => engine.Store.Get(id) ?? throw new ApiException(404, $"job '{id}' not found");

    /// <summary>Streams the job's events after <c>Last-Event-ID</c> (or <c>?after=</c>) until the job ends.</summary>
    private static async Task Events(string id, HttpContext ctx, JobEngine engine, long? after)
    {
        var record = Get(engine, id);
        long last = long.TryParse(ctx.Request.Headers["Last-Event-ID"], out var l) ? l : after ?? 0;
        ctx.Response.Headers.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["X-Accel-Buffering"] = "no";
        var ct = ctx.RequestAborted;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                foreach (var e in engine.Store.EventsAfter(record.Id, last))
                {
                    await ctx.Response.WriteAsync($"id: {e.Seq}\nevent: {e.Kind}\ndata: {JsonSerializer.Serialize(e, JobJson.Options)}\n\n", ct);
                    last = e.Seq;
                }
                await ctx.Response.Body.FlushAsync(ct);
                var current = engine.Store.Get(record.Id)!;
                if (JobStates.IsFinal(current.State) && engine.Store.EventsAfter(record.Id, last).Count == 0)
                {
                    await ctx.Response.WriteAsync($"event: end\ndata: {JsonSerializer.Serialize(View(engine, current), JobJson.Options)}\n\n", ct);
                    await ctx.Response.Body.FlushAsync(ct);
                    return;
                }
                await engine.Store.WaitForChange(record.Id, TimeSpan.FromSeconds(10), ct);
                await ctx.Response.WriteAsync(": keep-alive\n\n", ct);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
    }
}
