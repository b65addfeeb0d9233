using System.Diagnostics;
using SdLora.Pipelines;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Training;

/// <summary>Seconds of the three model calls a training run is made of, measured once on the loaded model.</summary>
/// <param name="CfgStepSeconds">One UNet forward of batch 2 (a sampling step with classifier-free guidance).</param>
/// <param name="DecodeSeconds">One VAE decode of an image at the training size.</param>
/// <param name="EncodeSeconds">One VAE encode of an image at the training size.</param>
public sealed record StepTimings(int Width, int Height, double CfgStepSeconds, double DecodeSeconds, double EncodeSeconds);

/// <summary>How long a phase should take, and what the figure is made of.</summary>
public sealed record PhaseEstimate(string Phase, double Seconds, string Detail);

/// <summary>
/// The time of each phase of a training run, estimated before it starts from a measured step (a CPU user deciding
/// whether to wait 20 minutes or 4 hours needs to know first). A LoRA training step at batch 1 does the work of a
/// CFG sampling step (forward + backward of one latent = about two forwards of one latent = one forward of the CFG
/// pair), three forwards' worth with gradient checkpointing.
/// </summary>
public static class WorkflowEstimate
{
    /// <summary>Times one CFG UNet step, one VAE decode and one VAE encode at <paramref name="width"/> x <paramref name="height"/> (random inputs).</summary>
    public static StepTimings Measure(StableDiffusionModel model, int width, int height, CancellationToken ct = default)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        using var generator = new Generator(3, CPU);
        var dtype = model.Compute.DType;
        var device = model.Compute.Device;
        int lh = height / 8, lw = width / 8;
        Tensor Random(params long[] shape) => torch.randn(shape, ScalarType.Float32, CPU, generator: generator).to(dtype).to(device);

        double Time(Action run)
        {
            ct.ThrowIfCancellationRequested();
            using var inner = torch.NewDisposeScope();
            var clock = Stopwatch.StartNew();
            run();
            return clock.Elapsed.TotalSeconds;
        }
        var config = model.UNet.Config;
        double cfg = Time(() => model.UNet.forward(Random(2, config.InChannels, lh, lw), torch.tensor(500L), Random(2, 77, config.CrossAttentionDim)).sum().to(ScalarType.Float32).item<float>());
        double decode = Time(() => model.Vae.Decode(Random(1, model.Vae.Config.LatentChannels, lh, lw)).sum().to(ScalarType.Float32).item<float>());
        double encode = Time(() => model.Vae.Encode(Random(1, 3, height, width)).Mean.sum().to(ScalarType.Float32).item<float>());
        return new StepTimings(width, height, cfg, decode, encode);
    }

    /// <summary>The phases of a run from measured <paramref name="t"/>.</summary>
    /// <param name="classImages">Class images still to generate.</param>
    /// <param name="classSteps">Sampling steps per class image (one UNet call each: the default samplers are single-step).</param>
    /// <param name="latentImages">Images whose latents will be encoded (flips count twice).</param>
    /// <param name="samples">Sample images at the end, of <paramref name="sampleSteps"/> steps each.</param>
    public static IReadOnlyList<PhaseEstimate> Estimate(StepTimings t, int classImages, int classSteps, int latentImages, int trainSteps,
        bool gradientCheckpointing, int samples = 0, int sampleSteps = 0)
    {
        var list = new List<PhaseEstimate>();
        if (classImages > 0)
            list.Add(new("class images", classImages * (classSteps * t.CfgStepSeconds + t.DecodeSeconds),
                $"{classImages} x ({classSteps} steps x {t.CfgStepSeconds:F1} s + decode {t.DecodeSeconds:F1} s)"));
        if (latentImages > 0)
            list.Add(new("latent caching", latentImages * t.EncodeSeconds, $"{latentImages} x encode {t.EncodeSeconds:F1} s"));
        double factor = gradientCheckpointing ? 1.5 : 1.0;
        list.Add(new("training", trainSteps * factor * t.CfgStepSeconds,
            $"{trainSteps} steps x {factor * t.CfgStepSeconds:F1} s{(gradientCheckpointing ? " (checkpointing: 1.5 CFG steps each)" : "")}"));
        if (samples > 0)
            list.Add(new("sampling", samples * (sampleSteps * t.CfgStepSeconds + t.DecodeSeconds), $"{samples} x {sampleSteps} steps"));
        return list;
    }

    /// <summary>"≈ 11 min"-style text for a duration in seconds.</summary>
    public static string Format(double seconds) => seconds switch
    {
        < 60 => $"{seconds:F0} s",
        < 3600 => $"{(int)(seconds / 60)} min {(int)(seconds % 60):D2} s",
        _ => $"{(int)(seconds / 3600)} h {(int)(seconds % 3600 / 60):D2} min",
    };
}
