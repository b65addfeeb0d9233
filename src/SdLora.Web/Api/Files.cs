using Microsoft.AspNetCore.Http;

namespace SdLora.Web.Api;

/// <summary>Serves a file the server has already resolved inside its folders.</summary>
public static class Files
{
    public static IResult Serve(string path, bool download = false)
    {
        var type = Path.GetExtension(path).ToLowerInvariant() switch
        {
            ".png" => "image/png",
            ".jpg" or ".jpeg" => "image/jpeg",
            ".webp" => "image/webp",
            ".bmp" => "image/bmp",
            ".csv" => "text/csv",
            ".txt" or ".toml" => "text/plain; charset=utf-8",
            ".json" => "application/json",
            _ => "application/octet-stream",
        };
        if (!File.Exists(path)) throw new ApiException(404, $"{Path.GetFileName(path)} not found");
        return Results.File(path, type, download ? Path.GetFileName(path) : null, enableRangeProcessing: true);
    }
}
