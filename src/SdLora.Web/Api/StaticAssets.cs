using System.Reflection;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace SdLora.Web.Api;

/// <summary>The pages' scripts, styles and vendored libraries, served from resources inside the assembly (<c>/static/...</c>).</summary>
public static class StaticAssets
{
    private static readonly Assembly Self = typeof(StaticAssets).Assembly;
    private static readonly HashSet<string> Names = Self.GetManifestResourceNames().Where(n => n.StartsWith("wwwroot/", StringComparison.Ordinal)).ToHashSet();

    public static void Map(WebApplication app) =>
        app.MapGet("/static/{**path}", (string path, HttpContext ctx) =>
        {
            var name = "wwwroot/" + path;
            if (!Names.Contains(name)) throw new ApiException(404, $"/static/{path} not found");
            var type = Path.GetExtension(path) switch
            {
                ".js" => "text/javascript; charset=utf-8",
                ".css" => "text/css; charset=utf-8",
                ".svg" => "image/svg+xml",
                ".png" => "image/png",
                _ => "text/plain; charset=utf-8",
            };
            ctx.Response.Headers.CacheControl = "no-cache";
            return Results.Stream(Self.GetManifestResourceStream(name)!, type);
        }).ExcludeFromDescription();
}
