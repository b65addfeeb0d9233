using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using SdLora.Web.Jobs;

namespace SdLora.Web.Pages;

/// <summary>Small helpers for the server-rendered pages: encoding, the shared layout, embedded page data.</summary>
public static class Html
{
    public static string H(string? text) => WebUtility.HtmlEncode(text ?? "");
    public static string U(string text) => Uri.EscapeDataString(text);

    /// <summary>Data for the page's script, as JSON in a non-executed script element (encoded so it cannot close the tag).</summary>
    public static string Data(object value) =>
        $"<script type=\"application/json\" id=\"page-data\">{JsonSerializer.Serialize(value, JobJson.Options).Replace("<", "\\u003c")}</script>";

    public static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):0.0} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):0.0} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:0} KiB",
        _ => $"{bytes} B",
    };

    private static readonly (string Href, string Label)[] Nav =
        [("/generate", "Generate"), ("/datasets", "Datasets"), ("/train", "Train"), ("/models", "Models"), ("/jobs", "Jobs")];

    public static IResult Page(string title, string active, string body, params string[] scripts)
    {
        var nav = string.Join("", Nav.Select(n => $"<a href=\"{n.Href}\"{(n.Href == active ? " class=\"active\"" : "")}>{n.Label}</a>"));
        var js = string.Join("", scripts.Select(s => $"<script src=\"/static/{s}\"></script>"));
        var html = $$"""
            <!doctype html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>{{H(title)}} · sdlora</title>
            <link rel="stylesheet" href="/static/app.css">
            <link rel="stylesheet" href="/static/lib/uPlot.min.css">
            </head>
            <body>
            <header><a class="brand" href="/">sdlora</a><nav>{{nav}}</nav><span id="busy" class="busy"></span></header>
            <main>
            {{body}}
            </main>
            <script src="/static/app.js"></script>{{js}}
            </body>
            </html>
            """;
        return Results.Content(html, "text/html; charset=utf-8");
    }
}
