using System.Security.Cryptography;
using SdLora.Checkpoints;
using SdLora.Models;
using SdLora.Sampling;
using SdLora.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Pipelines;

/// <summary>
/// A loaded Stable Diffusion 1.x model: tokenizer, text encoder, UNet, VAE and noise schedule, frozen, on the
/// chosen device and dtype. Built from a checkpoint (<see cref="Load"/>) or with random weights for benchmarks.
/// </summary>
public sealed class StableDiffusionModel : IDisposable
{
    public ClipTokenizer Tokenizer { get; }
    public ClipTextModel TextEncoder { get; }
    public UNet2DConditionModel UNet { get; }
    public AutoencoderKL Vae { get; }
    public NoiseSchedule Schedule { get; }
    public ComputeOptions Compute { get; }
    /// <summary>A1111's "Model" field: the checkpoint's file (or folder) name without extension.</summary>
    public string Name { get; }
    /// <summary>The checkpoint path, or null for in-memory models.</summary>
    public string? SourcePath { get; }
    /// <summary>Layout of the checkpoint it came from (for merge tools that write the same layout back).</summary>
    public CheckpointLayout? Layout { get; }

    /// <summary>Whether <see cref="ReleaseTextEncoder"/> freed the text encoder's weights (prompts can no longer be encoded).</summary>
    public bool TextEncoderReleased { get; private set; }

    /// <summary>
    /// Frees the text encoder's weights (moved to the shape-only "meta" device): a one-shot generation that has encoded its
    /// prompts needs them no more, and in fp32 they are half a gigabyte of SD1.5's peak. Encoding afterwards is refused.
    /// </summary>
    public void ReleaseTextEncoder()
    {
        TextEncoder.to(new Device(DeviceType.META));
        TextEncoderReleased = true;
    }

    private readonly Lazy<string?> _shortHash;
    /// <summary>A1111's "Model hash": the first 10 hex digits of the SHA-256 of the checkpoint file (the UNet weights file for a diffusers folder).</summary>
    public string? ShortHash => _shortHash.Value;

    public StableDiffusionModel(ClipTokenizer tokenizer, ClipTextModel textEncoder, UNet2DConditionModel unet, AutoencoderKL vae,
        NoiseSchedule schedule, ComputeOptions compute, string name, string? sourcePath = null, CheckpointLayout? layout = null)
    {
        Tokenizer = tokenizer; TextEncoder = textEncoder; UNet = unet; Vae = vae; Schedule = schedule; Compute = compute;
        Name = name; SourcePath = sourcePath; Layout = layout;
        foreach (var m in new nn.Module[] { textEncoder, unet, vae })
        {
            m.eval();
            foreach (var p in m.parameters()) p.requires_grad = false;
        }
        _shortHash = new(() => sourcePath is null ? null : ModelHashes.A1111ShortHash(sourcePath));
    }

    /// <summary>Loads an SD1.x checkpoint: a single <c>.safetensors</c>/<c>.ckpt</c> (with <paramref name="configYaml"/> or a <c>NAME.yaml</c> beside it, else dims from shapes) or a diffusers folder.</summary>
    /// <param name="ct">Stops the load between tensors with <see cref="OperationCanceledException"/>; whatever was built is disposed.</param>
    public static StableDiffusionModel Load(string path, string? configYaml = null, ComputeOptions? compute = null, IProgress<string>? progress = null,
        CancellationToken ct = default)
    {
        compute ??= ComputeOptions.CpuFloat32;
        ct.ThrowIfCancellationRequested();
        using var ckpt = StableDiffusionCheckpoint.Open(path, configYaml);
        var tokenizer = ckpt.TokenizerDir is { } dir ? ClipTokenizer.FromDiffusersFolder(dir) : ClipTokenizer.Default;

        var built = new List<nn.Module>();
        try
        {
            progress?.Report("text encoder");
            var te = Build(() => new ClipTextModel(ckpt.ClipTextConfig), ckpt.TextEncoderWeights, compute, built, ct);
            progress?.Report("UNet");
            var unet = Build(() => new UNet2DConditionModel(ckpt.UNetConfig), ckpt.UNetWeights, compute, built, ct);
            progress?.Report("VAE");
            var vae = Build(() => new AutoencoderKL(ckpt.AutoencoderKLConfig), ckpt.VaeWeights, compute, built, ct);

            var s = ckpt.Schedule;
            var schedule = new NoiseSchedule(s.TrainTimesteps, s.BetaSchedule, s.BetaStart, s.BetaEnd,
                s.PredictionType == "v_prediction" ? PredictionType.VPrediction : PredictionType.Epsilon);
            var name = Directory.Exists(path) ? new DirectoryInfo(path).Name : System.IO.Path.GetFileNameWithoutExtension(path);
            return new StableDiffusionModel(tokenizer, te, unet, vae, schedule, compute, name, path, ckpt.Layout);
        }
        catch
        {
            foreach (var m in built) m.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Builds a module without random initial weights, gives it the compute dtype, then loads the weights into it: each
    /// tensor is converted once, from the file's dtype straight to the one it is kept in (no fp32 copy of a bf16 model).
    /// </summary>
    private static T Build<T>(Func<T> create, SdLora.IO.ITensorSource weights, ComputeOptions compute, List<nn.Module> built, CancellationToken ct) where T : nn.Module
    {
        T module = ModuleInitialization.WithoutRandomInit(() =>
        {
            using (torch.no_grad()) return create();
        }, compute.DType);
        built.Add(module);
        if (compute.DType != ScalarType.Float32) module.to(compute.DType);
        ModuleWeights.Load(module, weights, ct: ct);
        return To(module, compute);
    }

    /// <summary>Moves a module to the compute device and dtype (parameters converted one at a time) and gives its layers the CPU low-precision policy.</summary>
    public static T To<T>(T module, ComputeOptions compute) where T : nn.Module
    {
        if (compute.DType != ScalarType.Float32) module.to(compute.DType);
        if (compute.Device.type != DeviceType.CPU) module.to(compute.Device);
        CpuPrecision.Apply(module, compute.CpuLowPrecision);
        return module;
    }

    public void Dispose()
    {
        TextEncoder.Dispose();
        UNet.Dispose();
        Vae.Dispose();
    }
}

/// <summary>The hashes A1111 shows for checkpoints, cached beside nothing: computed once per process per file.</summary>
public static class ModelHashes
{
    private static readonly Dictionary<string, string> Cache = new();

    public static string? A1111ShortHash(string path)
    {
        string? file = File.Exists(path) ? path
            : Directory.Exists(path) ? new[] { "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin" }
                .Select(f => System.IO.Path.Combine(path, f)).FirstOrDefault(File.Exists)
            : null;
        if (file is null) return null;
        var info = new FileInfo(file);
        var key = $"{info.FullName}|{info.Length}|{info.LastWriteTimeUtc.Ticks}";
        lock (Cache)
        {
            if (Cache.TryGetValue(key, out var h)) return h;
            using var s = File.OpenRead(file);
            h = Convert.ToHexString(SHA256.HashData(s)).ToLowerInvariant()[..10];
            Cache[key] = h;
            return h;
        }
    }
}
