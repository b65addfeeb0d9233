using System.Globalization;

namespace SdLora.Training.Optimizers;

/// <summary>Creates the optimizer a <see cref="TrainingConfig"/> names, reading kohya-style <c>--optimizer-args</c>.</summary>
public static class OptimizerFactory
{
    public static TrainingOptimizer Create(TrainingConfig c, IEnumerable<ParamGroup> groups)
    {
        var args = new Dictionary<string, string>(c.ParsedOptimizerArgs(), StringComparer.OrdinalIgnoreCase);
        var betas = args.TryGetValue("betas", out var bs) ? bs.Trim('(', ')', '[', ']').Split(',') : null;
        double b1(double dflt) => c.Beta1 ?? (betas is { Length: 2 } ? Num("betas", betas[0]) : dflt);
        double b2(double dflt) => c.Beta2 ?? (betas is { Length: 2 } ? Num("betas", betas[1]) : dflt);
        double wd(double dflt) => c.WeightDecay ?? (args.TryGetValue("weight_decay", out var w) ? Num("weight_decay", w) : dflt);
        double eps(double dflt) => c.Epsilon ?? (args.TryGetValue("eps", out var e) ? Num("eps", e) : dflt);
        double arg(string k, double dflt) => args.TryGetValue(k, out var v) ? Num(k, v) : dflt;
        bool flag(string k, bool dflt) => args.TryGetValue(k, out var v) ? v.Trim().ToLowerInvariant() is "true" or "1" : dflt;

        TrainingOptimizer opt = c.Optimizer.ToLowerInvariant() switch
        {
            "adamw" => new AdamW(groups, b1(0.9), b2(0.999), eps(1e-8), wd(0.01)),
            "lion" => new Lion(groups, b1(0.9), b2(0.99), wd(0)),
            "prodigy" => new Prodigy(groups, b1(0.9), b2(0.999), args.TryGetValue("beta3", out var b3) ? Num("beta3", b3) : null,
                eps(1e-8), wd(0), flag("decouple", true), flag("use_bias_correction", false), flag("safeguard_warmup", false),
                arg("d0", 1e-6), arg("d_coef", 1.0), arg("growth_rate", double.PositiveInfinity)),
            // transformers' defaults, which kohya keeps: relative steps scaled by each tensor's RMS, no first moment.
            "adafactor" => new Adafactor(groups, flag("relative_step", true), flag("scale_parameter", true), flag("warmup_init", false),
                c.Beta1 ?? (args.TryGetValue("beta1", out var ab1) && ab1.Trim().ToLowerInvariant() is not ("none" or "null") ? Num("beta1", ab1) : null),
                arg("decay_rate", -0.8), arg("clip_threshold", 1.0), Eps(args, "eps", 1e-30, 0), Eps(args, "eps", 1e-3, 1), wd(0)),
            _ => throw new SdLoraException($"optimizer '{c.Optimizer}' is not supported: use {string.Join(", ", TrainingConfig.Optimizers)}"),
        };
        var known = new HashSet<string>(StringComparer.OrdinalIgnoreCase) { "betas", "weight_decay", "eps", "beta3", "decouple", "use_bias_correction", "safeguard_warmup", "d0", "d_coef", "growth_rate",
            "relative_step", "scale_parameter", "warmup_init", "beta1", "decay_rate", "clip_threshold" };
        foreach (var k in args.Keys)
            if (!known.Contains(k)) throw new SdLoraException($"optimizer-args '{k}' is not a setting of {c.Optimizer}: use {string.Join(", ", known)}");
        return opt;
    }

    // Adafactor's eps is a pair "(1e-30, 1e-3)": the squared-gradient floor and the parameter-scale floor.
    private static double Eps(IReadOnlyDictionary<string, string> args, string key, double dflt, int index)
    {
        if (!args.TryGetValue(key, out var text)) return dflt;
        var parts = text.Trim('(', ')', '[', ']').Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length != 2) throw new SdLoraException($"optimizer-args {key}={text}: Adafactor's eps is a pair, e.g. eps=1e-30,1e-3");
        return Num(key, parts[index]);
    }

    private static double Num(string key, string text) =>
        double.TryParse(text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v
            : throw new SdLoraException($"optimizer-args {key}={text} is not a number");
}
