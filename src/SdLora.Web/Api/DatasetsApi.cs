using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using SdLora.Web.Jobs;

namespace SdLora.Web.Api;

public sealed record CreateDatasetRequest(string Name, string? InstancePrompt = null, string? ClassPrompt = null, int Repeats = 10);

public sealed record CaptionEdit(string Caption);

/// <summary><c>/api/datasets</c>: create, upload, captions (edit, BLIP job), thumbnails and images.</summary>
public static class DatasetsApi
{
    public static void Map(WebApplication app)
    {
        var api = app.MapGroup("/api/datasets").WithTags("datasets");
        api.MapGet("", (Datasets d) => d.List());
        api.MapPost("", (CreateDatasetRequest r, Datasets d) =>
            Results.Created($"/api/datasets/{Uri.EscapeDataString(r.Name ?? "")}", d.Create(r.Name, new DatasetSettings(r.InstancePrompt, r.ClassPrompt, r.Repeats))));
        api.MapGet("/{name}", (string name, Datasets d) => d.Detail(name));
        api.MapPut("/{name}/settings", (string name, DatasetSettings s, Datasets d) =>
        {
            d.SaveSettings(name, s);
            return d.Detail(name);
        });
        api.MapPost("/{name}/images", async (string name, HttpRequest request, Datasets d, CancellationToken ct) =>
        {
            if (!request.HasFormContentType) throw new ApiException(400, "send the photos (or a .zip) as multipart/form-data");
            var form = await request.ReadFormAsync(ct);
            return await d.Upload(name, form.Files, ct);
        }).DisableAntiforgery();
        api.MapGet("/{name}/images/{**image}", (string name, string image, Datasets d) => Files.Serve(d.ImagePath(name, image)));
        api.MapDelete("/{name}/images/{**image}", (string name, string image, Datasets d) =>
        {
            d.DeleteImage(name, image);
            return Results.NoContent();
        });
        api.MapGet("/{name}/thumbs/{**image}", (string name, string image, Datasets d) => Files.Serve(d.Thumbnail(name, image)));
        api.MapPut("/{name}/captions/{**image}", (string name, string image, CaptionEdit edit, Datasets d) =>
        {
            d.SetCaption(name, image, edit.Caption ?? "");
            return Results.NoContent();
        });
        api.MapPost("/{name}/caption", (string name, CaptionArgs? args, CaptionJob captions, JobEngine engine) =>
        {
            var a = captions.Check((args ?? new CaptionArgs(name)) with { Dataset = name });
            var job = engine.Enqueue(CaptionJob.TypeName, $"caption {name}", a);
            return Results.Accepted($"/api/jobs/{job.Id}", JobsApi.View(engine, job));
        });
    }
}
