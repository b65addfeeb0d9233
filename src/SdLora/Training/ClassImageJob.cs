using System.Diagnostics;
using SdLora.Pipelines;
using TorchSharp;

namespace SdLora.Training;

/// <summary>
/// Prior-preservation class images of one run: what the class folder already holds, what the class-image cache can
/// give (<see cref="ClassImageCache"/>), and the rest generated with the base model (sampler and steps from the
/// config: fast defaults on the CPU), each new image also added to the cache.
/// </summary>
public sealed class ClassImageJob(Txt2ImgPipeline pipeline, TrainingConfig config, string classDir)
{
    private const double CfgScale = 7;
    private ClassImageCache? _cache;
    private string? _key;

    public string ClassDir => classDir;

    /// <summary>Copies what the cache has into the class folder; returns how many images still need generating.</summary>
    public int Prepare(Action<string> info)
    {
        var c = config;
        int wanted = c.EffectiveNumClassImages;
        int existing = ClassImageFolder.CountExisting(classDir);
        if (c.ClassImageCacheFolder is { } root && existing < wanted)
        {
            var model = pipeline.Model;
            _cache = new ClassImageCache(root);
            _key = ClassImageCache.Key(model.ShortHash ?? model.Name, c.ClassPrompt!, c.Resolution.Width, c.Resolution.Height,
                c.EffectiveClassImageSampler, c.EffectiveClassImageSteps, CfgScale, c.ClipSkip);
            int copied = _cache.CopyInto(_key, classDir, wanted - existing);
            if (copied > 0) info($"class images: {copied} reused from the cache {_cache.FolderFor(_key)}");
            existing += copied;
        }
        int missing = Math.Max(0, wanted - existing);
        info(missing == 0
            ? $"class images: {existing} in {classDir}, none to generate"
            : $"class images: {existing} in {classDir}, generating {missing} for '{c.ClassPrompt}' ({c.EffectiveClassImageSampler}, {c.EffectiveClassImageSteps} steps, {c.Resolution.Width}x{c.Resolution.Height})");
        return missing;
    }

    /// <summary>Generates <paramref name="missing"/> images, reporting progress after every sampling step with an ETA.</summary>
    public int Generate(int missing, IProgress<TrainingProgress>? progress, CancellationToken ct)
    {
        if (missing <= 0) return 0;
        var c = config;
        int steps = c.EffectiveClassImageSteps;
        int existing = ClassImageFolder.CountExisting(classDir);
        var clock = Stopwatch.StartNew();
        progress?.Report(new TrainingProgress(TrainingPhase.ClassImages, 0, missing, Message: $"image 1/{missing}"));
        for (int i = 0; i < missing; i++)
        {
            ct.ThrowIfCancellationRequested();
            int image = i;
            // ETA from sampling steps done so far (a finished image also paid its decode).
            var stepProgress = progress is null ? null : new SyncProgress<GenerationProgress>(p =>
            {
                double done = image + (double)p.Step / Math.Max(1, p.Steps);
                double perImage = clock.Elapsed.TotalSeconds / Math.Max(1e-9, done);
                progress.Report(new TrainingProgress(TrainingPhase.ClassImages, image, missing, StepsPerSecond: 1 / perImage,
                    Eta: TimeSpan.FromSeconds(perImage * (missing - done)), Message: $"image {image + 1}/{missing} step {p.Step}/{p.Steps}"));
            });
            using (torch.no_grad())
            {
                var result = pipeline.Generate(new Txt2ImgOptions
                {
                    Prompt = c.ClassPrompt!, Width = c.Resolution.Width, Height = c.Resolution.Height, Seed = c.Seed + existing + i,
                    ClipSkip = c.ClipSkip, Steps = steps, Sampler = c.EffectiveClassImageSampler, CfgScale = CfgScale,
                }, stepProgress, ct);
                if (result.Cancelled) throw new OperationCanceledException(ct);
                var path = ClassImageFolder.Save(classDir, result.Images[0].Image, c.ClassPrompt!);
                if (_cache is not null && _key is not null) _cache.Add(_key, path);
            }
            double rate = (i + 1) / Math.Max(1e-9, clock.Elapsed.TotalSeconds);
            progress?.Report(new TrainingProgress(TrainingPhase.ClassImages, i + 1, missing, StepsPerSecond: rate,
                Eta: TimeSpan.FromSeconds((missing - i - 1) / rate), Message: $"image {i + 1}/{missing}"));
        }
        return missing;
    }
}
