using System.Net;

namespace SdLora.Web;

/// <summary>Upload bounds for one request (photos and dataset zips).</summary>
public sealed record UploadLimits
{
    public long MaxFileBytes { get; init; } = 64L << 20;
    public int MaxFiles { get; init; } = 500;
    public long MaxTotalBytes { get; init; } = 2L << 30;
    /// <summary>Largest image accepted, in pixels (width x height), checked from the file header before decoding.</summary>
    public long MaxPixels { get; init; } = 64_000_000;
}

/// <summary>What <c>sdlora serve</c> was asked for.</summary>
public sealed record ServeOptions
{
    /// <summary>Datasets, runs, outputs, the job database and job logs live here.</summary>
    public string Data { get; init; } = "sdlora-data";
    /// <summary>Checkpoints (<c>checkpoints/</c>), LoRAs (<c>lora/</c>) and BLIP (<c>blip/</c>); default <c>DATA/models</c>.</summary>
    public string? Models { get; init; }
    public int Port { get; init; } = 7860;
    public string Listen { get; init; } = "127.0.0.1";
    /// <summary>HTTP basic credentials <c>USER:PASS</c>.</summary>
    public string? Auth { get; init; }
    /// <summary>Bearer token (also accepted once as <c>?token=</c>, then kept in a cookie).</summary>
    public string? Token { get; init; }
    public string Device { get; init; } = "cpu";
    public string DType { get; init; } = "fp32";
    public UploadLimits Uploads { get; init; } = new();
    /// <summary>Checkpoints offered besides the models folder (name -> path), e.g. the bundled tiny model. Set by the program, never by a request.</summary>
    public IReadOnlyDictionary<string, string> ExtraCheckpoints { get; init; } = new Dictionary<string, string>();
    /// <summary>How often an idle worker looks for queued jobs that another process added (in-process enqueues wake it at once).</summary>
    public TimeSpan QueuePollInterval { get; init; } = TimeSpan.FromSeconds(1);

    public string ModelsDir => Models ?? Path.Combine(Data, "models");

    public bool IsLoopback => Listen is "localhost" || IPAddress.TryParse(Listen, out var ip) && IPAddress.IsLoopback(ip);

    /// <summary>Refuses settings that would expose the server: a non-loopback address needs <c>--auth</c> or <c>--token</c>.</summary>
    public ServeOptions Validate()
    {
        if (Port is < 0 or > 65535) throw new SdLoraException($"--port {Port} is not a TCP port: use 1-65535 (7860 is the default)");
        if (Listen != "localhost" && !IPAddress.TryParse(Listen, out _))
            throw new SdLoraException($"--listen '{Listen}' is not an IP address: use 127.0.0.1 (this machine only) or e.g. 0.0.0.0 with --auth/--token");
        if (Auth is not null && (Auth.IndexOf(':') is < 1 || Auth.EndsWith(':')))
            throw new SdLoraException("--auth must be USER:PASS with both parts non-empty");
        if (Token is not null && Token.Length < 8) throw new SdLoraException("--token must be at least 8 characters");
        if (Auth is not null && Token is not null) throw new SdLoraException("--auth and --token exclude each other: pick one");
        if (!IsLoopback && Auth is null && Token is null)
            throw new SdLoraException($"--listen {Listen} would open the server to other machines without a password: add --auth USER:PASS or --token T (or keep the default 127.0.0.1)");
        ComputeOptions.ParseDType(DType);
        return this;
    }
}
