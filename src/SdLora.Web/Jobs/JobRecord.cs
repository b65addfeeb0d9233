using System.Text.Json;
using System.Text.Json.Serialization;

namespace SdLora.Web.Jobs;

/// <summary>The states a job shows. Queued and running come from the engine; the final three are also written to the record.</summary>
public static class JobStates
{
    public const string Queued = "queued", Running = "running", Succeeded = "succeeded", Failed = "failed", Cancelled = "cancelled";
    public static bool IsFinal(string state) => state is Succeeded or Failed or Cancelled;
}

/// <summary>
/// Our record of one job, <c>jobs/ID/job.json</c>: what to do (<see cref="Args"/>), the engine's job id, and when it
/// ended, how. Results (images, LoRAs, logs) are files under the data folder named in <see cref="Result"/>.
/// </summary>
public sealed record JobRecord
{
    public required string Id { get; init; }
    public required string Type { get; init; }
    public required string Title { get; init; }
    public JsonElement Args { get; init; }
    public string Queue { get; init; } = "cpu";
    public DateTimeOffset Created { get; init; }
    public string? EngineId { get; init; }
    public string State { get; init; } = JobStates.Queued;
    public DateTimeOffset? Started { get; init; }
    public DateTimeOffset? Finished { get; init; }
    /// <summary>How many times the job was started.</summary>
    public int Attempts { get; init; }
    /// <summary>Starts that ended in an orderly hand-over (server or worker stopping): they do not count against the attempt limit.</summary>
    public int Handovers { get; init; }
    public bool CancelRequested { get; init; }
    public string? Error { get; init; }
    public JsonElement? Result { get; init; }
    /// <summary>For training jobs: the run folder's name.</summary>
    public string? Run { get; init; }
    /// <summary>The worker (process) that runs or last ran the job.</summary>
    public string? Worker { get; init; }
    /// <summary>The files this job made, relative to the data root (images, LoRAs, the run folder's LoRA and state).</summary>
    public IReadOnlyList<string> Files { get; init; } = [];
}

/// <summary>One line of a job's <c>events.jsonl</c>: a log message, a progress record, or a state change.</summary>
public sealed record JobEvent(long Seq, DateTimeOffset Time, string Kind, string? Message = null, JobProgress? Progress = null);

/// <summary>
/// A small progress record: <see cref="Done"/> of <see cref="Total"/> in <see cref="Phase"/> (sampling steps, images,
/// training steps), with training's epoch, speed, ETA and loss when they apply.
/// </summary>
public sealed record JobProgress(string Phase, int Done, int Total, string? Label = null, int? Epoch = null, int? Epochs = null,
    double? Rate = null, double? EtaSeconds = null, double? Loss = null, double? SmoothedLoss = null, double? LearningRate = null);

public static class JobJson
{
    /// <summary>snake_case, as AUTOMATIC1111's API: one naming for our API, the A1111 subset and the records.</summary>
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
    public static readonly JsonSerializerOptions Indented = new(Options) { WriteIndented = true };
}
