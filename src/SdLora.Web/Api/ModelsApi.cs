using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using SdLora.Checkpoints;
using SdLora.Lora;
using SdLora.Web.Jobs;

namespace SdLora.Web.Api;

public sealed record CheckpointView(string Name, bool IsFolder, long Size, bool Current, string? Family, string? Layout, bool? Usable, string? WhyNot,
    long? Parameters, IReadOnlyDictionary<string, int>? DTypes, string? Error);

public sealed record LoraView(string Name, string File, long Size, string? Dialect, int? Rank, double? Alpha, int? UnetModules, int? TextEncoderModules,
    IReadOnlyDictionary<string, string>? Metadata, string? Error);

/// <summary><c>/api/models</c> and <c>/api/loras</c>: what is in the models folder, as <c>model inspect</c> and <c>lora inspect</c> describe it.</summary>
public static class ModelsApi
{
    public static CheckpointView View(ModelCatalog catalog, CheckpointEntry c)
    {
        try
        {
            var r = catalog.Inspect(c);
            return new CheckpointView(c.Name, c.IsFolder, c.Size == 0 ? r.FileBytes : c.Size, c.Name == catalog.CurrentCheckpointName, r.Family, r.Layout, r.Usable, r.WhyNot,
                r.Parts.Sum(p => p.Parameters), r.DTypeCounts, null);
        }
        catch (Exception e) when (e is SdLoraException or IOException or InvalidDataException)
        {
            return new CheckpointView(c.Name, c.IsFolder, c.Size, false, null, null, false, null, null, null, e.Message);
        }
    }

    public static LoraView View(ModelCatalog catalog, SdLora.Pipelines.LoraFolderEntry l, bool withMetadata)
    {
        try
        {
            var i = LoraInspector.Inspect(l.Path);
            return new LoraView(l.Name, l.RelativePath, l.Size, i.Dialect.ToString(), i.Modules.Count > 0 ? i.Modules.Max(m => m.Rank) : null,
                i.Modules.Count > 0 ? i.Modules[0].Alpha : null, i.UnetModules, i.TextEncoderModules, withMetadata ? i.Metadata : null, null);
        }
        catch (Exception e) when (e is SdLoraException or IOException or InvalidDataException)
        {
            return new LoraView(l.Name, l.RelativePath, l.Size, null, null, null, null, null, null, e.Message);
        }
    }

    public static void Map(WebApplication app)
    {
        var models = app.MapGroup("/api").WithTags("models");
        models.MapGet("/models", (ModelCatalog c) => c.Checkpoints().Select(e => View(c, e)).ToList());
        models.MapGet("/models/{**name}", (string name, ModelCatalog c) => c.Inspect(c.Checkpoint(name)));
        models.MapGet("/loras", (ModelCatalog c) => c.Loras().Select(l => View(c, l, false)).ToList());
        models.MapGet("/loras/{name}", (string name, ModelCatalog c) =>
        {
            c.InspectLora(name);
            return View(c, c.Loras().First(l => l.Name == name), true);
        });
        models.MapGet("/loras/{name}/file", (string name, ModelCatalog c) =>
        {
            c.InspectLora(name);
            return Files.Serve(c.Loras().First(l => l.Name == name).Path, download: true);
        });
        // lora merge as a job: the LoRAs merged into a checkpoint, written as a new checkpoint in the models folder.
        models.MapPost("/merge", (MergeArgs args, MergeJob merge, JobEngine engine) =>
        {
            var a = merge.Check(args);
            var job = engine.Enqueue(MergeJob.TypeName, $"merge {string.Join(", ", a.Loras.Select(l => l.Name))} into {a.Model}", a);
            return Results.Accepted($"/api/jobs/{job.Id}", JobsApi.View(engine, job));
        });
        models.MapGet("/blip", (ModelCatalog c, DataFolders f) => new { available = c.HasBlip, folder = f.Blip });
    }
}
