using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Training.Optimizers;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Training;

/// <summary>
/// Where a run stands: <see cref="Step"/> optimizer steps done; the next micro-batch is number <see cref="BatchInEpoch"/>
/// of 0-based epoch <see cref="Epoch"/>. Noise and timesteps are seeded from (seed, epoch, batch), and the batch order
/// from (seed, epoch), so this position is all the RNG state a resumed run needs.
/// </summary>
public sealed record TrainingState(int Step, int Epoch, int BatchInEpoch, double ElapsedSeconds, string ConfigHash,
    string SessionId, double TrainingStartedAt, string? LastLora);

/// <summary>
/// The <c>state/</c> folder: the trained weights as they are (<c>lora.safetensors</c> for a LoRA, <c>model.safetensors</c>
/// for a fine-tuned model, <c>embedding.safetensors</c> for textual inversion), <c>optimizer.safetensors</c> and
/// <c>state.json</c>. Written into <c>state.new/</c> first and swapped in, so a crash mid-save leaves the previous state intact.
/// </summary>
public static class TrainingStateStore
{
    private const string StateJson = "state.json", LoraFile = "lora.safetensors", OptimizerFile = "optimizer.safetensors";

    /// <summary>Saves a LoRA run's state (fp32 LoRA weights in <c>lora.safetensors</c>).</summary>
    public static void Save(RunFolder run, TrainingState state, LoraNetwork network, TrainingOptimizer optimizer)
    {
        using var scope = torch.NewDisposeScope();
        Save(run, state, LoraFile, network.StateDict().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.to(ScalarType.Float32))), optimizer);
    }

    /// <summary>Saves the state: <paramref name="weights"/> in their own dtype (exact) as <paramref name="weightsFile"/>, the optimizer, the position.</summary>
    public static void Save(RunFolder run, TrainingState state, string weightsFile, IEnumerable<KeyValuePair<string, Tensor>> weights, TrainingOptimizer optimizer)
    {
        var dir = run.StateDir;
        string fresh = dir + ".new", old = dir + ".old";
        if (Directory.Exists(fresh)) Directory.Delete(fresh, true);
        Directory.CreateDirectory(fresh);
        using (var scope = torch.NewDisposeScope())
            Safetensors.Save(Path.Combine(fresh, weightsFile), weights.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.detach().cpu())));
        optimizer.Save(Path.Combine(fresh, OptimizerFile));
        AtomicFile.WriteAllText(Path.Combine(fresh, StateJson), JsonSerializer.Serialize(state, RunFolder.JsonOptions));
        if (Directory.Exists(old)) Directory.Delete(old, true);
        if (Directory.Exists(dir)) Directory.Move(dir, old);
        Directory.Move(fresh, dir);
        if (Directory.Exists(old)) Directory.Delete(old, true);
    }

    /// <summary>Reads the saved position (falls back to <c>state.old/</c> when a save was cut off mid-swap).</summary>
    public static TrainingState Read(RunFolder run)
    {
        var dir = ActiveDir(run);
        var path = Path.Combine(dir, StateJson);
        try { return JsonSerializer.Deserialize<TrainingState>(File.ReadAllText(path), RunFolder.JsonOptions) ?? throw new JsonException("empty"); }
        catch (Exception e) when (e is JsonException or IOException)
        {
            throw new SdLoraException($"resume: {path} is not readable ({e.Message}); start a new run with overwrite") { Setting = "resume" };
        }
    }

    /// <summary>Copies the saved LoRA weights and optimizer state into the live network and optimizer.</summary>
    public static void Restore(RunFolder run, LoraNetwork network, TrainingOptimizer optimizer) =>
        Restore(run, LoraFile, f => RestoreLora(f, network), optimizer);

    /// <summary>Hands the saved weights file (<paramref name="weightsFile"/>) to <paramref name="restoreWeights"/>, then loads the optimizer state.</summary>
    public static void Restore(RunFolder run, string weightsFile, Action<SafetensorsFile> restoreWeights, TrainingOptimizer optimizer)
    {
        var dir = ActiveDir(run);
        var path = Path.Combine(dir, weightsFile);
        if (!File.Exists(path))
            throw new SdLoraException($"resume: {path} is missing: the saved run trained something else (another method?); resume with the same settings or start over with overwrite") { Setting = "resume" };
        using (var f = SafetensorsFile.Open(path))
        using (var scope = torch.NewDisposeScope())
            restoreWeights(f);
        optimizer.Load(Path.Combine(dir, OptimizerFile));
    }

    /// <summary>Copies a saved LoRA state (kohya names) into <paramref name="network"/>.</summary>
    public static void RestoreLora(SafetensorsFile f, LoraNetwork network)
    {
        foreach (var m in network.Modules)
        {
            string down = m.LoraName + ".lora_down.weight", up = m.LoraName + ".lora_up.weight";
            if (!f.Contains(down) || !f.Contains(up))
                throw new SdLoraException($"resume: {f.Path} has no weights for {m.LoraName}: the saved run trained other layers; resume with the same network settings or start over with overwrite") { Setting = "resume" };
            var d = f.Load(down); var u = f.Load(up);
            if (!d.shape.SequenceEqual(m.DownWeight.shape) || !u.shape.SequenceEqual(m.UpWeight.shape))
                throw new SdLoraException($"resume: {m.LoraName} in {f.Path} has another shape (different network-dim?); resume with the same settings or start over with overwrite") { Setting = "resume" };
            m.SetWeights(d, u);
        }
    }

    private static string ActiveDir(RunFolder run)
    {
        if (File.Exists(Path.Combine(run.StateDir, StateJson))) return run.StateDir;
        if (File.Exists(Path.Combine(run.StateDir + ".old", StateJson))) return run.StateDir + ".old";
        throw new SdLoraException($"resume: {run.StateDir} holds no state.json; start a new run with overwrite") { Setting = "resume" };
    }

    /// <summary>The settings that must not change across a resume (paths to outputs, run length and save cadence may).</summary>
    public static TrainingConfig ResumeRelevant(TrainingConfig c) => c with
    {
        Output = null, Resume = false, Overwrite = false, MaxTrainEpochs = 1, MaxTrainSteps = null, SaveEveryNEpochs = null,
        SaveLastNEpochs = null, SampleEveryNEpochs = null, SamplePrompts = null, Device = "cpu", ClassData = null,
    };

    public static string ConfigHash(TrainingConfig c) =>
        Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(ResumeRelevant(c), RunFolder.JsonOptions))))[..16].ToLowerInvariant();

    /// <summary>Settings whose values differ between two configs, as <c>name old -> new</c> (for the resume error message).</summary>
    public static List<string> Differences(TrainingConfig saved, TrainingConfig now)
    {
        var a = JsonSerializer.SerializeToElement(ResumeRelevant(saved), RunFolder.JsonOptions);
        var b = JsonSerializer.SerializeToElement(ResumeRelevant(now), RunFolder.JsonOptions);
        var diffs = new List<string>();
        foreach (var p in a.EnumerateObject())
        {
            string other = b.TryGetProperty(p.Name, out var v) ? v.GetRawText() : "null";
            if (p.Value.GetRawText() != other) diffs.Add($"{p.Name} {p.Value.GetRawText()} -> {other}");
        }
        return diffs;
    }
}
