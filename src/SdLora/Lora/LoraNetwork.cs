using SdLora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Lora;

/// <summary>
/// A set of LoRA modules attached to a model's layers (UNet and/or text encoder), created fresh for training
/// (<see cref="Create"/>) or from a file for inference (<see cref="FromFile"/>). Several networks can be attached
/// to the same model at once, each with its own multiplier; <see cref="Detach"/> restores the exact base outputs.
/// </summary>
public sealed class LoraNetwork : IDisposable
{
    private readonly List<LoraModule> _modules;

    public IReadOnlyList<LoraModule> Modules => _modules;
    public IEnumerable<LoraModule> UnetModules => _modules.Where(m => m.Part == LoraPart.Unet);
    public IEnumerable<LoraModule> TextEncoderModules => _modules.Where(m => m.Part == LoraPart.TextEncoder);
    /// <summary>Where the weights came from (a path) or "new".</summary>
    public string Source { get; }
    /// <summary>For networks read from a file: the match report (unmatched keys etc.).</summary>
    public LoraMatchResult? Match { get; }

    private LoraNetwork(List<LoraModule> modules, string source, LoraMatchResult? match)
    {
        _modules = modules; Source = source; Match = match;
    }

    /// <summary>Creates a trainable network (kohya init: up = 0, so the model's output is unchanged) on the layers selected by <paramref name="options"/>. Not attached yet.</summary>
    public static LoraNetwork Create(nn.Module? unet, nn.Module? textEncoder, LoraNetworkOptions options, Generator? generator = null)
    {
        var index = LoraTargetIndex.FromModules(options.TrainUnet ? unet : null, options.TrainTextEncoder ? textEncoder : null);
        var modules = new List<LoraModule>();
        foreach (var t in index.Targets.OrderBy(t => t.Part).ThenBy(t => t.ModulePath, StringComparer.Ordinal))
        {
            bool selected = t.Part == LoraPart.Unet ? LoraTargetRules.IsUnetTarget(t.ModulePath, options.UnetTargets)
                : LoraTargetRules.IsTextEncoderTarget(t.ModulePath, options.TextEncoderMlp);
            if (!selected) continue;
            bool bigKernel = t.IsConv && t.Kernel > 1;
            int rank = bigKernel ? options.ConvRank ?? options.Rank : options.Rank;
            double alpha = bigKernel ? options.ConvAlpha ?? options.Alpha : options.Alpha;
            var m = NewModule(t, rank, alpha);
            m.Dropout = options.Dropout;
            if (generator is not null) m.ResetParameters(generator);
            modules.Add(m);
        }
        if (modules.Count == 0)
            throw new SdLoraException("no layer of the model matches the LoRA targets chosen; enable the UNet or the text encoder, or pick other targets");
        return new LoraNetwork(modules, "new", null);
    }

    /// <summary>
    /// Builds (not attached) a network from a LoRA file for the given model, with <paramref name="multiplier"/>.
    /// Unmatched keys are in <see cref="Match"/>; nothing matching, shapes that do not fit, or a file for another family throw.
    /// </summary>
    public static LoraNetwork FromFile(LoraFile file, nn.Module? unet, nn.Module? textEncoder, double multiplier = 1.0, Func<string, string?>? ldmUnetModulePath = null)
    {
        var match = LoraMatcher.Match(file, LoraTargetIndex.FromModules(unet, textEncoder), ldmUnetModulePath);
        var modules = new List<LoraModule>();
        foreach (var (w, t) in match.Matched)
        {
            var m = NewModule(t, w.Rank, w.Alpha);
            var down = w.Down; var up = w.Up;
            // A linear-shaped LoRA on a 1x1 conv (or the reverse) is the same matrix; reshape to the module's factors.
            m.SetWeights(down.reshape(m.DownWeight.shape), up.reshape(m.UpWeight.shape));
            m.Multiplier = multiplier;
            modules.Add(m);
        }
        return new LoraNetwork(modules, file.Path, match);
    }

    /// <summary>Reads a file and builds the network from it (see <see cref="FromFile(LoraFile, nn.Module?, nn.Module?, double, Func{string, string?}?)"/>).</summary>
    public static LoraNetwork FromFile(string path, nn.Module? unet, nn.Module? textEncoder, double multiplier = 1.0, Func<string, string?>? ldmUnetModulePath = null)
    {
        using var file = LoraFile.Read(path);
        return FromFile(file, unet, textEncoder, multiplier, ldmUnetModulePath);
    }

    private static LoraModule NewModule(LoraTarget t, int rank, double? alpha) => t.Layer switch
    {
        AdaptableLinear lin => new LoraLinear(t.KohyaName, t.Part, lin, rank, alpha),
        AdaptableConv2d conv => new LoraConv(t.KohyaName, t.Part, conv, rank, alpha),
        _ => throw new InvalidOperationException($"{t.PrefixedPath} is not an adaptable layer"),
    };

    public double Multiplier
    {
        set { foreach (var m in _modules) m.Multiplier = value; }
    }

    public void Attach() { foreach (var m in _modules) m.Attach(); }
    public void Detach() { foreach (var m in _modules) m.Detach(); }
    public void Merge(bool keepOriginal = false) { foreach (var m in _modules) m.Merge(keepOriginal); }
    public void Unmerge() { foreach (var m in _modules) m.Unmerge(); }

    /// <summary>The generator every module draws its dropout masks from (see <see cref="LoraModule.DropoutGenerator"/>).</summary>
    public Generator? DropoutGenerator
    {
        set { foreach (var m in _modules) m.DropoutGenerator = value; }
    }

    /// <summary>Training / eval mode (dropout only acts in training).</summary>
    public void Train(bool on = true) { foreach (var m in _modules) m.train(on); }

    /// <summary>The trainable tensors (down and up of every module).</summary>
    public IEnumerable<Parameter> Parameters() => _modules.SelectMany(m => m.parameters());

    /// <summary>kohya state dict: <c>NAME.lora_down.weight</c>, <c>NAME.lora_up.weight</c>, <c>NAME.alpha</c> (views of the live weights; alpha new 0-d tensors).</summary>
    public List<KeyValuePair<string, Tensor>> StateDict() =>
        _modules.SelectMany(m => KohyaLoraWriter.ModuleTensors(m.LoraName, m.DownWeight, m.UpWeight, m.Alpha)).ToList();

    /// <summary>
    /// Saves in kohya format. <paramref name="metadata"/> is the <c>ss_*</c> set (see <see cref="KohyaMetadata.Build"/>; the
    /// trainer adds its training fields); sshs hashes are added. Returns the metadata written.
    /// </summary>
    public Dictionary<string, string> Save(string path, IReadOnlyDictionary<string, string> metadata, ScalarType dtype = ScalarType.Float16)
    {
        using var scope = torch.NewDisposeScope();
        return KohyaLoraWriter.Save(path, StateDict(), metadata, dtype);
    }

    public void Dispose()
    {
        // Detaches every module; merged weights stay merged (call Unmerge first to undo them).
        foreach (var m in _modules) m.Dispose();
        _modules.Clear();
    }
}
