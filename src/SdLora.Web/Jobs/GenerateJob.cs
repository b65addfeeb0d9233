using SdLora.Imaging;
using SdLora.Pipelines;
using SdLora.Text;

namespace SdLora.Web.Jobs;

/// <summary>A txt2img request, in AUTOMATIC1111's field names (what <c>/sdapi/v1/txt2img</c> takes) plus the checkpoint.</summary>
public sealed record GenerateArgs
{
    public string Prompt { get; init; } = "";
    public string NegativePrompt { get; init; } = "";
    public string SamplerName { get; init; } = "Euler a";
    public int Steps { get; init; } = 20;
    public double CfgScale { get; init; } = 7;
    public long Seed { get; init; } = -1;
    public int Width { get; init; } = 512;
    public int Height { get; init; } = 512;
    public int BatchSize { get; init; } = 1;
    public int NIter { get; init; } = 1;
    public int ClipSkip { get; init; } = 1;
    /// <summary>Checkpoint name in the models folder; null = the current one (<c>sd_model_checkpoint</c>).</summary>
    public string? Model { get; init; }

    public Txt2ImgOptions ToOptions(string outputDir, string loraDir) => new()
    {
        Prompt = Prompt, NegativePrompt = NegativePrompt, Sampler = SamplerName, Steps = Steps, CfgScale = CfgScale, Seed = Seed,
        Width = Width, Height = Height, BatchSize = BatchSize, BatchCount = NIter, ClipSkip = ClipSkip, OutputDir = outputDir, LoraDir = loraDir,
    };
}

public sealed record GeneratedFile(string File, long Seed, string Infotext);

public sealed record GenerateResult(string Model, IReadOnlyList<GeneratedFile> Images, bool Cancelled, IReadOnlyList<string> Warnings);

/// <summary>txt2img on a model lent by the <see cref="ModelHost"/>; the PNGs go to <c>DATA/outputs/txt2img</c>.</summary>
public sealed class GenerateJob(DataFolders folders, ModelCatalog catalog, ModelHost host, ServeOptions options) : IJobHandler
{
    public const string TypeName = "generate";
    public string Type => TypeName;

    /// <summary>Checks a request before it is queued (bad values get a 400 now, not a failed job later); fills in the model.</summary>
    public GenerateArgs Check(GenerateArgs a)
    {
        if (a.Width > 2048 || a.Height > 2048) throw new ApiException(400, $"size {a.Width}x{a.Height} is too large for this server: at most 2048 per side");
        if (a.BatchSize > 16 || a.NIter > 100) throw new ApiException(400, "batch_size is at most 16 and n_iter at most 100 per request");
        try
        {
            a.ToOptions(folders.Outputs, folders.Loras).Validate();
            foreach (var tag in PromptParser.Parse(a.Prompt).Loras) LoraFolder.Resolve(tag.Name, folders.Loras);
        }
        catch (SdLoraException e) { throw new ApiException(400, e.Message); }
        return a with { Model = catalog.Checkpoint(a.Model).Name };
    }

    public object? Run(JobContext context)
    {
        var a = context.Args<GenerateArgs>();
        var checkpoint = catalog.Checkpoint(a.Model);
        context.Progress(new JobProgress("loading model", 0, 1, checkpoint.Name));
        using var lease = host.Borrow(checkpoint.Path, options.Compute(), context.Token);
        var pipeline = new Txt2ImgPipeline(lease.Model);
        var result = pipeline.Generate(a.ToOptions(folders.Outputs, folders.Loras), new SyncProgress<GenerationProgress>(p =>
            context.Progress(new JobProgress("sampling", (p.Batch - 1) * p.Steps + p.Step, p.Batches * p.Steps, $"batch {p.Batch}/{p.Batches}"))), context.Token);
        foreach (var w in result.Warnings) context.Log("warning: " + w);
        var files = result.Images.Select(i => new GeneratedFile(Path.GetFileName(i.Path!), i.Seed, i.Parameters.ToInfotext())).ToList();
        foreach (var f in files) context.Log($"saved {f.File} (seed {f.Seed})");
        context.Owns(result.Images.Select(i => i.Path!));
        return new GenerateResult(checkpoint.Name, files, result.Cancelled, result.Warnings);
    }
}
