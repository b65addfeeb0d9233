using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using SdLora.Web.Jobs;

namespace SdLora.Web.Api;

/// <summary><c>/api/train</c> (queues a training job) and <c>/api/runs</c>: settings, loss, samples, LoRA files, resume.</summary>
public static class TrainApi
{
    public static void Map(WebApplication app)
    {
        var api = app.MapGroup("/api").WithTags("train");
        api.MapPost("/train", (TrainArgs args, TrainJob train, JobEngine engine) =>
        {
            var a = train.Check(args with { Resume = false });
            var job = engine.Enqueue(TrainJob.TypeName, $"train {a.Run}", a, a.Run);
            return Results.Accepted($"/api/jobs/{job.Id}", JobsApi.View(engine, job));
        });
        api.MapGet("/runs", (Runs r) => r.List());
        api.MapGet("/runs/{name}", (string name, Runs r, JobEngine engine) =>
        {
            var d = r.Detail(name);
            return new { d.Name, d.Settings, d.Loras, d.Samples, d.ClassImages, d.HasState, Jobs = d.Jobs.Select(j => JobsApi.View(engine, j)).ToList() };
        });
        api.MapGet("/runs/{name}/loss", (string name, Runs r, int? after) => r.Loss(name, after ?? 0));
        api.MapPost("/runs/{name}/resume", (string name, Runs r, TrainJob train, JobEngine engine) =>
        {
            r.PathOf(name);
            if (r.Detail(name).Jobs.Any(j => !JobStates.IsFinal(engine.State(j)))) throw new ApiException(409, $"run '{name}' already has a job queued or running");
            var a = train.Check(new TrainArgs { Run = name, Resume = true });
            var job = engine.Enqueue(TrainJob.TypeName, $"resume {name}", a, name);
            return Results.Accepted($"/api/jobs/{job.Id}", JobsApi.View(engine, job));
        });
        app.MapGet("/files/runs/{name}/{**file}", (string name, string file, Runs r, bool? download) =>
        {
            var path = DataFolders.Inside(r.PathOf(name), file, "file");
            if (file.StartsWith("state", StringComparison.Ordinal)) throw new ApiException(404, "training state is not served");
            return Files.Serve(path, download == true || path.EndsWith(".safetensors", StringComparison.Ordinal));
        }).WithTags("train");
    }
}
