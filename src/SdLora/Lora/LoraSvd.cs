using System.Globalization;
using SdLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Lora;

/// <summary>Per-module numbers of an SVD re-factorisation (extract / resize).</summary>
public sealed record LoraSvdModuleReport(string Name, int OldRank, int NewRank, double NewAlpha, double SumRetained, double FrobeniusRetained, double MaxRatio);

public sealed record LoraExtractOptions
{
    public int Rank { get; init; } = 4;
    /// <summary>Rank for 3x3 convs; null = no 3x3 conv LoRAs (kohya's conv_dim).</summary>
    public int? ConvRank { get; init; }
    /// <summary>kohya clamps the factors to +-quantile(values, q); 1 (or more) disables the clamp.</summary>
    public double ClampQuantile { get; init; } = 0.99;
    /// <summary>The text encoder is extracted only when some weight differs by more than this (kohya's min_diff).</summary>
    public double MinDiff { get; init; } = 0.01;
    /// <summary>UNet layers to extract; <see cref="LoraUnetTargets.Convs"/> is added when <see cref="ConvRank"/> is set.</summary>
    public LoraUnetTargets UnetTargets { get; init; } = LoraUnetTargets.KohyaDefault;
    public ScalarType SaveDType { get; init; } = ScalarType.Float16;
    public string? OutputName { get; init; }
    public string? SdModelName { get; init; }
}

public enum LoraResizeMethod { Fixed, SvRatio, SvFro, SvCumulative }

public sealed record LoraResizeOptions
{
    /// <summary>New rank (with a dynamic method: the maximum rank).</summary>
    public int Rank { get; init; } = 4;
    /// <summary>New rank of 3x3 conv modules; defaults to <see cref="Rank"/>.</summary>
    public int? ConvRank { get; init; }
    public LoraResizeMethod Method { get; init; } = LoraResizeMethod.Fixed;
    /// <summary>sv_ratio: max S / min kept S; sv_fro: Frobenius fraction to keep; sv_cumulative: fraction of sum(S) to keep.</summary>
    public double Parameter { get; init; }
    public ScalarType SaveDType { get; init; } = ScalarType.Float16;

    public static LoraResizeMethod ParseMethod(string name) => name.Trim().ToLowerInvariant() switch
    {
        "sv_ratio" => LoraResizeMethod.SvRatio,
        "sv_fro" => LoraResizeMethod.SvFro,
        "sv_cumulative" => LoraResizeMethod.SvCumulative,
        _ => throw new SdLoraException($"unknown dynamic resize method '{name}': use sv_ratio, sv_fro or sv_cumulative"),
    };

    /// <summary>kohya's name of a dynamic method (what <see cref="ParseMethod"/> reads); "fixed" for none.</summary>
    public static string MethodName(LoraResizeMethod method) => method switch
    {
        LoraResizeMethod.SvRatio => "sv_ratio",
        LoraResizeMethod.SvFro => "sv_fro",
        LoraResizeMethod.SvCumulative => "sv_cumulative",
        _ => "fixed",
    };
}

/// <summary>
/// SVD tools over LoRA deltas, following kohya's extract_lora_from_models.py and resize_lora.py:
/// extract a LoRA from two checkpoints, and re-factorise a LoRA to another (or a dynamic) rank.
/// </summary>
public static class LoraSvd
{
    private const double MinSingularValue = 1e-6;

    /// <summary>
    /// Extracts a LoRA approximating <c>tuned - base</c> (both sources in diffusers names with <c>unet.</c>/<c>text_encoder.</c> prefixes).
    /// Returns kohya tensors (alpha = rank, so scale 1), per-module reports, and the metadata to save with.
    /// </summary>
    public static (List<KeyValuePair<string, Tensor>> Tensors, List<LoraSvdModuleReport> Modules, Dictionary<string, string> Metadata) Extract(
        ITensorSource baseModel, ITensorSource tuned, LoraExtractOptions options, IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        var unetTargets = options.UnetTargets | (options.ConvRank is not null ? LoraUnetTargets.Convs : LoraUnetTargets.None);
        var index = LoraTargetIndex.FromParameters(baseModel.Keys.Select(k => (k, baseModel.ShapeOf(k))));
        var targets = index.Targets
            .Where(t => t.Part == LoraPart.Unet ? LoraTargetRules.IsUnetTarget(t.ModulePath, unetTargets) : LoraTargetRules.IsTextEncoderTarget(t.ModulePath, true))
            .Where(t => options.ConvRank is not null || !(t.IsConv && t.Kernel > 1))
            .OrderBy(t => t.Part).ThenBy(t => t.ModulePath, StringComparer.Ordinal).ToList();
        if (targets.Count == 0) throw new SdLoraException($"{baseModel.Description}: has no UNet or text-encoder layers sdlora can extract a LoRA for; is it an SD 1.x model?");

        foreach (var t in targets)
        {
            var key = t.PrefixedPath + ".weight";
            if (!tuned.Contains(key)) throw new SdLoraException($"{tuned.Description}: has no '{key}', which the base model has; the two models are not the same architecture");
            var shape = tuned.ShapeOf(key);
            if (!shape.SequenceEqual(t.WeightShape))
                throw new SdLoraException($"{tuned.Description}: '{key}' has shape [{string.Join(",", shape)}] but the base has [{string.Join(",", t.WeightShape)}]; the two models are not the same architecture");
        }

        // kohya: the text encoder is included only if it changed by more than min_diff somewhere.
        bool textEncoderChanged = false;
        foreach (var t in targets.Where(t => t.Part == LoraPart.TextEncoder))
        {
            using var scope = torch.NewDisposeScope();
            if (Diff(baseModel, tuned, t).abs().max().item<float>() > options.MinDiff) { textEncoderChanged = true; break; }
        }
        if (!textEncoderChanged) targets = targets.Where(t => t.Part == LoraPart.Unet).ToList();

        var tensors = new List<KeyValuePair<string, Tensor>>();
        var reports = new List<LoraSvdModuleReport>();
        foreach (var t in targets)
        {
            cancellation.ThrowIfCancellationRequested();
            progress?.Report(t.KohyaName);
            using var scope = torch.NewDisposeScope();
            var diff = Diff(baseModel, tuned, t);
            bool bigKernel = t.IsConv && t.Kernel > 1;
            int rank = (int)Math.Min(Math.Min(bigKernel ? options.ConvRank!.Value : options.Rank, t.InFeatures), t.OutFeatures);
            var (up, down, s) = Factor(diff.flatten(1), rank);
            if (options.ClampQuantile < 1)
            {
                double hi = Quantile(torch.cat([up.flatten(), down.flatten()]), options.ClampQuantile);
                up = up.clamp(-hi, hi);
                down = down.clamp(-hi, hi);
            }
            reports.Add(Report(t.KohyaName, (int)s.shape[0], rank, rank, s));
            var downShaped = t.IsConv ? down.reshape(rank, t.InFeatures, t.WeightShape[2], t.WeightShape[3]) : down;
            var upShaped = t.IsConv ? up.reshape(t.OutFeatures, rank, 1, 1) : up;
            foreach (var kv in KohyaLoraWriter.ModuleTensors(t.KohyaName, downShaped, upShaped, rank))
                tensors.Add(new(kv.Key, kv.Value.MoveToOuterDisposeScope()));
        }
        var metadata = KohyaMetadata.Build(options.Rank, options.Rank, options.ConvRank, options.ConvRank, options.OutputName, options.SdModelName);
        metadata["ss_training_comment"] = $"extracted by sdlora from {Path.GetFileName(baseModel.Description)} -> {Path.GetFileName(tuned.Description)}";
        return (tensors, reports, metadata);
    }

    private static Tensor Diff(ITensorSource a, ITensorSource b, LoraTarget t)
    {
        var key = t.PrefixedPath + ".weight";
        return b.Load(key, ScalarType.Float32).sub_(a.Load(key, ScalarType.Float32));
    }

    /// <summary>Truncated SVD <c>m ~ (U S)[:, :r] @ Vh[:r]</c>; returns (up = U S, down = Vh, all singular values).</summary>
    private static (Tensor Up, Tensor Down, Tensor S) Factor(Tensor m, int rank)
    {
        var (u, s, vh) = torch.linalg.svd(m, fullMatrices: false);
        var up = u[.., ..rank].mul(s[..rank].unsqueeze(0));
        var down = vh[..rank, ..];
        return (up.contiguous(), down.contiguous(), s);
    }

    /// <summary>torch.quantile with linear interpolation.</summary>
    internal static double Quantile(Tensor values, double q)
    {
        using var sorted = values.flatten().to(ScalarType.Float64).sort().Values;
        long n = sorted.shape[0];
        double pos = q * (n - 1);
        long lo = (long)Math.Floor(pos), hi = Math.Min(lo + 1, n - 1);
        double vlo = sorted[lo].item<double>(), vhi = sorted[hi].item<double>();
        return vlo + (pos - lo) * (vhi - vlo);
    }

    private static LoraSvdModuleReport Report(string name, int oldRank, int newRank, double newAlpha, Tensor s)
    {
        var s64 = s.to(ScalarType.Float64);
        double sum = s64.abs().sum().item<double>();
        double sumKept = s64[..newRank].abs().sum().item<double>();
        double fro = s64.pow(2).sum().sqrt().item<double>();
        double froKept = s64[..newRank].pow(2).sum().sqrt().item<double>();
        double last = s64[newRank - 1].item<double>();
        return new LoraSvdModuleReport(name, oldRank, newRank, newAlpha,
            sum > 0 ? sumKept / sum : 1, fro > 0 ? froKept / fro : 1, last > 0 ? s64[0].item<double>() / last : double.PositiveInfinity);
    }

    /// <summary>
    /// Extracts and writes the LoRA. The output is checked before any work (<see cref="OutputPath.CheckFile"/>): never one of
    /// the two models, never an existing file unless <paramref name="overwrite"/>; written atomically.
    /// </summary>
    public static List<LoraSvdModuleReport> ExtractToFile(ITensorSource baseModel, ITensorSource tuned, string output, LoraExtractOptions options, bool overwrite = false, IProgress<string>? progress = null, CancellationToken cancellation = default)
    {
        OutputPath.CheckFile(output, overwrite, [baseModel.Description, tuned.Description], "LoRA");
        using var scope = torch.NewDisposeScope();
        var (tensors, reports, metadata) = Extract(baseModel, tuned, options with { OutputName = options.OutputName ?? Path.GetFileNameWithoutExtension(output) }, progress, cancellation);
        KohyaLoraWriter.Save(output, tensors, metadata, options.SaveDType);
        return reports;
    }

    /// <summary>
    /// Re-factorises every module's <c>up @ down</c> to a new rank (kohya resize_lora.py): new alpha = old scale * new rank,
    /// so the effective delta is unchanged up to the truncation. Output names are kohya's.
    /// </summary>
    public static (List<KeyValuePair<string, Tensor>> Tensors, List<LoraSvdModuleReport> Modules, Dictionary<string, string> Metadata) Resize(
        LoraFile lora, LoraResizeOptions options, CancellationToken cancellation = default)
    {
        if (options.Rank <= 0) throw new SdLoraException($"--rank must be a positive number (got {options.Rank})");
        if (options.ConvRank is <= 0) throw new SdLoraException($"--conv-rank must be a positive number (got {options.ConvRank})");
        if (options.Method != LoraResizeMethod.Fixed && !(options.Parameter > 0))
        {
            var name = LoraResizeOptions.MethodName(options.Method);
            throw new SdLoraException($"--dynamic {name} needs a positive parameter (e.g. {name}:{(options.Method == LoraResizeMethod.SvRatio ? "2" : "0.9")})");
        }
        var tensors = new List<KeyValuePair<string, Tensor>>();
        var reports = new List<LoraSvdModuleReport>();
        int oldMax = 0;
        double lastAlpha = 0;
        foreach (var m in lora.Modules)
        {
            cancellation.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            int oldRank = m.Rank;
            oldMax = Math.Max(oldMax, oldRank);
            double scale = (m.Alpha ?? oldRank) / oldRank;
            bool bigKernel = m.IsConv && (m.Down.shape[2] > 1 || m.Down.shape[3] > 1);
            int maxRank = bigKernel ? options.ConvRank ?? options.Rank : options.Rank;
            var full = m.Up.flatten(1).mm(m.Down.flatten(1));
            var (u, s, vh) = torch.linalg.svd(full, fullMatrices: false);
            int newRank = NewRank(s, maxRank, options.Method, options.Parameter);
            double newAlpha = scale * newRank;
            lastAlpha = newAlpha;
            var up = u[.., ..newRank].mul(s[..newRank].unsqueeze(0));
            var down = vh[..newRank, ..];
            if (m.IsConv)
            {
                down = down.reshape(newRank, m.Down.shape[1], m.Down.shape[2], m.Down.shape[3]);
                up = up.reshape(m.Up.shape[0], newRank, 1, 1);
            }
            reports.Add(Report(m.KohyaName, oldRank, newRank, newAlpha, s));
            foreach (var kv in KohyaLoraWriter.ModuleTensors(m.KohyaName, down.contiguous(), up.contiguous(), newAlpha))
                tensors.Add(new(kv.Key, kv.Value.MoveToOuterDisposeScope()));
        }
        var metadata = new Dictionary<string, string>(lora.Metadata.Where(kv => !kv.Key.StartsWith("sshs_", StringComparison.Ordinal)));
        var comment = metadata.GetValueOrDefault("ss_training_comment") ?? "";
        if (options.Method == LoraResizeMethod.Fixed)
        {
            var conv = options.ConvRank is { } cr && cr != options.Rank ? $" (conv: {cr})" : "";
            metadata["ss_training_comment"] = $"dimension is resized from {oldMax} to {options.Rank}{conv}; {comment}";
            metadata["ss_network_dim"] = options.Rank.ToString(CultureInfo.InvariantCulture);
            metadata["ss_network_alpha"] = KohyaMetadata.PyFloat(lastAlpha);
        }
        else
        {
            metadata["ss_training_comment"] = $"Dynamic resize with {LoraResizeOptions.MethodName(options.Method)}: {options.Parameter.ToString(CultureInfo.InvariantCulture)} from {oldMax}; {comment}";
            metadata["ss_network_dim"] = "Dynamic";
            metadata["ss_network_alpha"] = "Dynamic";
        }
        metadata.TryAdd("ss_network_module", KohyaMetadata.NetworkModule);
        return (tensors, reports, metadata);
    }

    /// <summary>kohya's rank choice: index rules on the singular values, capped at <paramref name="maxRank"/>, 1 for a zero matrix.</summary>
    internal static int NewRank(Tensor s, int maxRank, LoraResizeMethod method, double p)
    {
        var sv = s.to(ScalarType.Float64).data<double>().ToArray();
        int n = sv.Length;
        int Clamp(int i) => Math.Max(0, Math.Min(i, n - 1));
        int rank = method switch
        {
            LoraResizeMethod.SvRatio => Clamp(sv.Count(v => v > sv[0] / p) - 1) + 1,
            LoraResizeMethod.SvCumulative => Clamp(SearchSorted(Cumulative(sv, v => v), p)) + 1,
            LoraResizeMethod.SvFro => Clamp(SearchSorted(Cumulative(sv, v => v * v), p * p)) + 1,
            _ => maxRank,
        };
        if (sv[0] <= MinSingularValue) return 1;
        return Math.Min(rank, Math.Min(maxRank, n));
    }

    private static double[] Cumulative(double[] sv, Func<double, double> f)
    {
        var c = new double[sv.Length];
        double total = sv.Sum(f), run = 0;
        for (int i = 0; i < sv.Length; i++) { run += f(sv[i]); c[i] = run / total; }
        return c;
    }

    // torch.searchsorted (left): first index with c[i] >= target.
    private static int SearchSorted(double[] c, double target)
    {
        int i = 0;
        while (i < c.Length && c[i] < target) i++;
        return i;
    }

    /// <summary>Resizes a LoRA file into <paramref name="output"/>: checked first (never the input, never an existing file unless <paramref name="overwrite"/>), written atomically.</summary>
    public static List<LoraSvdModuleReport> ResizeFile(string input, string output, LoraResizeOptions options, bool overwrite = false, CancellationToken cancellation = default)
    {
        OutputPath.CheckFile(output, overwrite, [input], "LoRA");
        using var lora = LoraFile.Read(input);
        using var scope = torch.NewDisposeScope();
        var (tensors, reports, metadata) = Resize(lora, options, cancellation);
        KohyaLoraWriter.Save(output, tensors, metadata, options.SaveDType);
        return reports;
    }
}
