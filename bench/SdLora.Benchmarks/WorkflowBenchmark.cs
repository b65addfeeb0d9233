using System.Diagnostics;
using SdLora.Models;
using SdLora.Training;
using TorchSharp;

namespace SdLora.Benchmarks;

/// <summary>
/// The seed recipe a CPU user runs: <see cref="Photos"/> photos, <see cref="Steps"/> LoRA steps at <see cref="Size"/>²,
/// prior preservation with <see cref="ClassImages"/> class images generated first. Smaller sizes and fewer steps run
/// the same phases faster; <see cref="WorkflowBenchmarkResult.Extrapolated"/> scales each phase back to the recipe by its work.
/// </summary>
public sealed record WorkflowBenchmarkOptions(
    string Checkpoint,
    string PhotoFolder,
    string WorkFolder,
    string DType = "auto",
    int Size = 512,
    int Steps = 70,
    int Photos = 4,
    int ClassImages = 8,
    int? ClassImageSteps = null,
    string? ClassImageSampler = null,
    bool GradientCheckpointing = false)
{
    public static WorkflowBenchmarkOptions Recipe(string checkpoint, string photos, string work) => new(checkpoint, photos, work);
}

/// <summary>One phase measured, and the same phase scaled to the full recipe (512², 70 steps, 8 class images, 4 photos).</summary>
public sealed record WorkflowPhase(string Phase, double Seconds, int Count, double RecipeSeconds);

public sealed record WorkflowBenchmarkResult(WorkflowBenchmarkOptions Options, ComputeOptions Compute, int Threads,
    IReadOnlyList<WorkflowPhase> Phases, double WallSeconds, long PeakRssBytes, int ClassImagesGenerated, int TrainSteps, TrainingConfig Config)
{
    public double MeasuredSeconds => Phases.Sum(p => p.Seconds);
    public double Extrapolated => Phases.Sum(p => p.RecipeSeconds);
}

/// <summary>
/// Runs the whole DreamBooth-LoRA workflow through <see cref="DreamBoothLoraTrainer"/> on a full-size SD1.5 checkpoint with
/// random weights (the synthetic file of <see cref="LoadBenchmark"/>) and reports the trainer's own phase times. Class images
/// go to a fresh folder, so they are generated (not taken from the class-image cache).
/// </summary>
public static class WorkflowBenchmark
{
    public const int RecipeSize = 512, RecipeSteps = 70, RecipePhotos = 4, RecipeClassImages = 8;

    public static WorkflowBenchmarkResult Run(WorkflowBenchmarkOptions o, Func<CpuKernelProbeResult>? cpuProbe = null,
        IProgress<TrainingProgress>? progress = null, CancellationToken ct = default)
    {
        var photos = Path.Combine(o.WorkFolder, "photos");
        if (Directory.Exists(o.WorkFolder)) Directory.Delete(o.WorkFolder, recursive: true);
        Directory.CreateDirectory(photos);
        string[] extensions = [".jpg", ".jpeg", ".png", ".webp", ".bmp"];
        var sources = Directory.EnumerateFiles(o.PhotoFolder).Where(f => extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
            .Order(StringComparer.Ordinal).Take(o.Photos).ToList();
        if (sources.Count < o.Photos) throw new SdLoraException($"{o.PhotoFolder}: has {sources.Count} photos, the workflow benchmark needs {o.Photos}");
        foreach (var f in sources) File.Copy(f, Path.Combine(photos, Path.GetFileName(f)));

        var config = new TrainingConfig
        {
            Model = o.Checkpoint, Data = photos, Output = Path.Combine(o.WorkFolder, "run"), OutputName = "sks",
            ClassData = Path.Combine(o.WorkFolder, "class_images"),
            InstancePrompt = "a photo of sks dog", ClassPrompt = "a photo of a dog", NumClassImages = o.ClassImages,
            Resolution = Resolution.Square(o.Size), MinBucketReso = Math.Min(256, o.Size), MaxBucketReso = Math.Max(o.Size, 256), BucketResoSteps = 64,
            MaxTrainSteps = o.Steps, NumRepeats = 1, NetworkDim = 16, NetworkAlpha = 8, LearningRate = 1e-4, Seed = 1,
            Dtype = o.DType, GradientCheckpointing = o.GradientCheckpointing, ClassImageCache = "none",
        };
        if (o.ClassImageSteps is { } steps) config = config with { ClassImageSteps = steps };
        if (o.ClassImageSampler is { } sampler) config = config with { ClassImageSampler = sampler };
        var compute = config.ResolveCompute(cpuProbe);
        config = config with { Dtype = ComputeOptions.DTypeName(compute.DType) };

        UNetBenchmark.ResetPeakRss();
        var clock = Stopwatch.StartNew();
        var result = new DreamBoothLoraTrainer(config, cpuProbe).Train(progress, ct);
        double wall = clock.Elapsed.TotalSeconds;
        long peak = UNetBenchmark.PeakRssBytes();

        var unet = UNetConfig.StableDiffusion15;
        var vae = AutoencoderKLConfig.StableDiffusion15;
        int classSteps = config.EffectiveClassImageSteps;
        double Work(int size, int photos, int classImages, int trainSteps, string phase)
        {
            int lat = size / 8;
            return phase switch
            {
                "class images" => classImages * (classSteps * UNetFlops.Forward(unet, 2, lat, lat, 77) + VaeFlops.Decode(vae, 1, lat, lat)),
                "latent caching" => (photos + classImages) * VaeFlops.Encode(vae, 1, size, size),
                "training" => trainSteps * 2 * UNetFlops.Forward(unet, 1, lat, lat, 77),
                _ => 1,
            };
        }
        var phases = (result.Phases ?? []).Select(p =>
        {
            double scale = Work(RecipeSize, RecipePhotos, RecipeClassImages, RecipeSteps, p.Phase) /
                           Work(o.Size, o.Photos, result.ClassImagesGenerated, result.Steps, p.Phase);
            return new WorkflowPhase(p.Phase, p.Seconds, p.Count, p.Seconds * (double.IsFinite(scale) ? scale : 1));
        }).ToList();
        return new WorkflowBenchmarkResult(o, compute, torch.get_num_threads(), phases, wall, peak, result.ClassImagesGenerated, result.Steps, config);
    }
}
