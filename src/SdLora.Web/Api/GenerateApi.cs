using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using SdLora.Imaging;
using SdLora.Pipelines;
using SdLora.Web.Jobs;

namespace SdLora.Web.Api;

public sealed record OutputView(string File, long? Seed, string? Infotext, GenerationParameters? Parameters, DateTimeOffset Created);

/// <summary><c>/api/generate</c> (queues a txt2img job) and <c>/api/outputs</c> (the gallery: PNGs with their parameters).</summary>
public static class GenerateApi
{
    public static void Map(WebApplication app)
    {
        var api = app.MapGroup("/api").WithTags("generate");
        api.MapPost("/generate", (GenerateArgs args, GenerateJob generate, JobEngine engine) =>
        {
            var a = generate.Check(args);
            var job = engine.Enqueue(GenerateJob.TypeName, Title(a), a);
            return Results.Accepted($"/api/jobs/{job.Id}", JobsApi.View(engine, job));
        });
        api.MapGet("/outputs", (DataFolders f, int? limit) =>
            Directory.EnumerateFiles(f.Outputs, "*.png").Select(p => new FileInfo(p))
                .OrderByDescending(i => i.Name, StringComparer.Ordinal).Take(Math.Clamp(limit ?? 60, 1, 1000))
                .Select(i => Output(i)).ToList());
        api.MapGet("/outputs/{file}", (string file, DataFolders f) => Output(new FileInfo(DataFolders.Inside(f.Outputs, file, "image"))));
        app.MapGet("/files/outputs/{file}", (string file, DataFolders f, bool? download) => Files.Serve(DataFolders.Inside(f.Outputs, file, "image"), download == true))
            .WithTags("generate");
    }

    public static string Title(GenerateArgs a)
    {
        var p = a.Prompt.ReplaceLineEndings(" ");
        return "generate: " + (p.Length > 60 ? p[..60] + "..." : p);
    }

    private static OutputView Output(FileInfo i)
    {
        string? text = null;
        try { PngFile.ReadText(i.FullName).TryGetValue("parameters", out text); }
        catch (Exception e) when (e is IOException or InvalidDataException or SdLoraException) { }
        GenerationParameters? p = null;
        if (text is not null)
            try { p = GenerationParameters.Parse(text); }
            catch (Exception e) when (e is FormatException or OverflowException or IndexOutOfRangeException) { }
        return new OutputView(i.Name, p?.Seed, text, p, i.LastWriteTimeUtc);
    }
}
