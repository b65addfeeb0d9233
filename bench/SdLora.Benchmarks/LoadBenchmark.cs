using System.Diagnostics;
using System.Text.Json;
using SdLora.Checkpoints;
using SdLora.Pipelines;
using SdLora.IO;
using SdLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Benchmarks;

/// <summary>What loading a full-size checkpoint cost.</summary>
public sealed record LoadBenchmarkResult(
    string CheckpointPath,
    long FileBytes,
    long Parameters,
    long Fp32Bytes,
    long RssBeforeBytes,
    long PeakRssBytes,
    double Seconds,
    string DType = "fp32",
    long WeightBytes = 0,
    long RssAfterBytes = 0)
{
    /// <summary>Peak resident memory over the fp32 weights held; the target is below 1.3.</summary>
    public double PeakOverFp32 => (double)PeakRssBytes / Fp32Bytes;

    /// <summary>Peak resident memory over the bytes of the weights as held (in <see cref="DType"/>).</summary>
    public double PeakOverWeights => WeightBytes > 0 ? (double)PeakRssBytes / WeightBytes : PeakOverFp32;
}

/// <summary>
/// Measures the memory and time of loading a full-size SD1.5 checkpoint: a single-file LDM fp16 safetensors with
/// random weights and the real architecture's names and shapes (generated from the SD1.5 configs through
/// <see cref="LdmKeyMap"/>), opened through <see cref="StableDiffusionCheckpoint"/> and loaded, every tensor of every
/// part, into fp32 tensors held in memory the way the models hold them. Run <see cref="MeasureLoad"/> in a fresh
/// process so that the peak resident set (VmHWM) is the load alone.
/// </summary>
public static class LoadBenchmark
{
    public const string FileName = "sd15-random-ldm-fp16.safetensors";

    /// <summary>The LDM names and shapes of a complete SD1.5 single file (fp16 weights, plus the position_ids buffer).</summary>
    public static List<(string Name, long[] Shape)> Sd15LdmLayout()
    {
        var (u, v, c) = (UNetConfig.StableDiffusion15, AutoencoderKLConfig.StableDiffusion15, ClipTextConfig.StableDiffusion15);
        var list = new List<(string, long[])>();
        foreach (var part in new[] { ModelPart.UNet, ModelPart.Vae, ModelPart.TextEncoder })
            foreach (var (name, shape) in ReferenceLayout.Of(part, u, v, c))
            {
                var ldm = LdmKeyMap.DiffusersKeyToLdm(part, name, u, v) ?? throw new InvalidOperationException($"no LDM name for {name}");
                list.Add((ldm, part == ModelPart.Vae && LdmKeyMap.IsVaeAttentionProjectionWeight(name) ? [shape[0], shape[1], 1, 1] : shape));
            }
        return list;
    }

    /// <summary>Writes the synthetic checkpoint into <paramref name="folder"/> unless it is already there; returns its path.</summary>
    public static string EnsureSd15Checkpoint(string folder, IProgress<string>? progress = null, CancellationToken cancel = default)
    {
        var path = Path.Combine(folder, FileName);
        if (File.Exists(path)) return path;
        var layout = Sd15LdmLayout();
        const string PositionIds = LdmKeyMap.TextEncoderPrefix + "text_model.embeddings.position_ids";

        var files = layout.Select(e => new TensorLayout(e.Name, ScalarType.Float16, e.Shape))
            .Append(new TensorLayout(PositionIds, ScalarType.Int64, [1, 77])).ToList();
        // Streamed one tensor at a time: writing it never holds more than the largest tensor.
        using var generator = new torch.Generator(1234, torch.CPU);
        int done = 0;
        SafetensorsStreamWriter.Write(path, files, t =>
        {
            if (++done % 200 == 0) progress?.Report($"wrote {done}/{files.Count} tensors");
            return t.Name == PositionIds ? torch.arange(77, ScalarType.Int64).reshape(1, 77) : (torch.randn(t.Shape, generator: generator) * 0.02f).to(ScalarType.Float16);
        }, cancellation: cancel);
        return path;
    }

    /// <summary>
    /// Loads <paramref name="path"/> the way generation and training do — into the real fp32 model modules through
    /// <see cref="StableDiffusionModel.Load"/> — and reports the peak RSS against the fp32 weight bytes. Call in a fresh process.
    /// </summary>
    public static LoadBenchmarkResult MeasureLoad(string path, ComputeOptions? compute = null)
    {
        compute ??= ComputeOptions.CpuFloat32;
        long before = ProcessMemory.ReadStatusKiB("VmRSS") * 1024;
        var clock = Stopwatch.StartNew();
        using var model = StableDiffusionModel.Load(path, compute: compute);
        double seconds = clock.Elapsed.TotalSeconds;
        var modules = new nn.Module[] { model.UNet, model.Vae, model.TextEncoder };
        long parameters = modules.Sum(ModuleWeights.ParameterCount);
        long weightBytes = modules.SelectMany(m => m.parameters()).Sum(p => p.NumberOfElements * p.ElementSize);
        long peak = ProcessMemory.ReadStatusKiB("VmHWM") * 1024;
        long after = ProcessMemory.ReadStatusKiB("VmRSS") * 1024;
        return new LoadBenchmarkResult(path, new FileInfo(path).Length, parameters, parameters * 4, before, peak, seconds,
            ComputeOptions.DTypeName(compute.DType), weightBytes, after);
    }
}

/// <summary>Reads this process's memory figures from /proc/self/status (Linux).</summary>
public static class ProcessMemory
{
    /// <summary>A <c>/proc/self/status</c> field in KiB (VmRSS, VmHWM, ...), or 0 where it is not available.</summary>
    public static long ReadStatusKiB(string field)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return 0;
        foreach (var line in File.ReadLines(status))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0]);
        return 0;
    }
}
