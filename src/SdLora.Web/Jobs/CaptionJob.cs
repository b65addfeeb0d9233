using SdLora.Captioning;

namespace SdLora.Web.Jobs;

public sealed record CaptionArgs(string Dataset, string Prefix = "", bool Overwrite = false);

public sealed record CaptionResult(int Captioned, int Kept, int Failed);

/// <summary>BLIP captions for every image of a dataset, written as the <c>.txt</c> files training reads (<c>sdlora caption</c>).</summary>
public sealed class CaptionJob(DataFolders folders, Datasets datasets, ServeOptions options) : IJobHandler
{
    public const string TypeName = "caption";
    public string Type => TypeName;

    public CaptionArgs Check(CaptionArgs a)
    {
        datasets.PathOf(a.Dataset);
        try { BlipCaptioner.EnsureModelFolder(folders.Blip); }
        catch (SdLoraException) when (Directory.Exists(folders.Blip) && Directory.EnumerateFiles(folders.Blip, "*.pth").Any()) { }
        catch (SdLoraException e) { throw new ApiException(400, e.Message.Replace("pass --model DIR or set " + BlipCaptioner.ModelEnvironmentVariable, "restart the server")); }
        return a;
    }

    public object? Run(JobContext context)
    {
        var a = context.Args<CaptionArgs>();
        var dir = datasets.PathOf(a.Dataset);
        context.Progress(new JobProgress("loading BLIP", 0, 1));
        using var blip = BlipCaptioner.Load(folders.Blip, options.Compute(), context.Token);
        // kohya's settings (at most 75 tokens), within what the model's position table holds.
        var defaults = new BlipCaptionOptions();
        var captionOptions = defaults with { Generation = defaults.Generation with { MaxLength = Math.Min(defaults.Generation.MaxLength, blip.Model.Config.Text.MaxPositionEmbeddings) } };
        var written = new List<string>();
        var summary = DatasetCaptioner.Run(dir, blip, captionOptions, new DatasetCaptionOptions { Prefix = a.Prefix, Overwrite = a.Overwrite },
            new SyncProgress<CaptionProgress>(p =>
            {
                context.Progress(new JobProgress("captioning", p.Done, p.Total, Path.GetFileName(p.Last.ImagePath)));
                if (p.Last.Outcome == CaptionOutcome.Captioned)
                {
                    context.Log($"{Path.GetRelativePath(dir, p.Last.ImagePath)}: {p.Last.Caption}");
                    written.Add(p.Last.CaptionPath);
                }
                if (p.Last.Outcome == CaptionOutcome.Failed) context.Log($"skipped {p.Last.Error}");
            }), context.Token);
        context.Owns(written);
        return new CaptionResult(summary.Captioned, summary.Kept, summary.Failed);
    }
}
