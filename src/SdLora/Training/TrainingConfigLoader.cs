using System.Collections;
using System.Globalization;
using System.Reflection;
using System.Text;
using Tomlyn;
using Tomlyn.Model;

namespace SdLora.Training;

/// <summary>
/// Builds a <see cref="TrainingConfig"/>: defaults, then a TOML file whose keys mirror the flags, then the
/// options given explicitly on the command line (flags beat the file), then <see cref="TrainingConfig.Validate"/>.
/// Keys are kebab-case (<c>train-batch-size</c>); kohya's snake_case names (<c>train_batch_size</c>,
/// <c>pretrained_model_name_or_path</c>, <c>optimizer_type</c>, ...) are accepted too, and tables
/// (kohya's <c>[training_arguments]</c> sections) are flattened.
/// </summary>
public static class TrainingConfigLoader
{
    /// <summary>kohya / diffusers names whose kebab form differs from ours.</summary>
    private static readonly Dictionary<string, string> Aliases = new(StringComparer.OrdinalIgnoreCase)
    {
        ["pretrained-model-name-or-path"] = "model",
        ["train-data-dir"] = "data",
        ["instance-data-dir"] = "data",
        ["output-dir"] = "output",
        ["out"] = "output", // --out is the output flag of every sdlora command
        ["reg-data-dir"] = "reg-data",
        ["class-data-dir"] = "class-data",
        ["caption-dropout-rate"] = "caption-dropout",
        ["optimizer-type"] = "optimizer",
        ["adam-beta1"] = "beta1",
        ["adam-beta2"] = "beta2",
        ["adam-epsilon"] = "epsilon",
        ["adam-weight-decay"] = "weight-decay",
        ["dataset-repeats"] = "num-repeats",
        ["max-train-epoch"] = "max-train-epochs",
        ["lr-warmup"] = "lr-warmup-steps",
    };

    /// <summary>kohya keys that only steer things sdlora does on its own; accepted and reported, not applied.</summary>
    private static readonly HashSet<string> IgnoredKohyaKeys = new(StringComparer.OrdinalIgnoreCase)
    {
        "network-module", "save-model-as", "xformers", "sdpa", "mem-eff-attn", "max-data-loader-n-workers",
        "persistent-data-loader-workers", "logging-dir", "log-prefix", "log-with", "save-state", "lowram",
        "with-prior-preservation", "config", "caption-tag-dropout-rate", "console-log-simple",
    };

    private static readonly Lazy<Dictionary<string, PropertyInfo>> Properties = new(() =>
        typeof(TrainingConfig).GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanWrite)
            .ToDictionary(p => FlagName(p.Name), StringComparer.OrdinalIgnoreCase));

    /// <summary>Every flag name the config understands (kebab-case, no dashes in front).</summary>
    public static IReadOnlyCollection<string> FlagNames => Properties.Value.Keys;

    /// <summary><c>TrainBatchSize</c> -> <c>train-batch-size</c>.</summary>
    public static string FlagName(string propertyName)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < propertyName.Length; i++)
        {
            char c = propertyName[i];
            if (char.IsUpper(c) && i > 0) sb.Append('-');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    /// <summary>Loads defaults + <paramref name="tomlPath"/> (optional) + <paramref name="overrides"/>, then validates.</summary>
    /// <param name="overrides">Options set explicitly on the command line, by flag name (with or without <c>--</c>): raw strings or typed values.</param>
    /// <param name="notes">Receives lines about accepted-but-ignored kohya keys.</param>
    public static TrainingConfig Load(string? tomlPath, IReadOnlyDictionary<string, object?>? overrides = null,
        bool validate = true, ICollection<string>? notes = null)
    {
        var config = new TrainingConfig();
        if (tomlPath is not null) config = ApplyToml(config, tomlPath, notes);
        if (overrides is not null) config = Apply(config, overrides, "command line", notes);
        return validate ? config.Validate() : config;
    }

    public static TrainingConfig ApplyToml(TrainingConfig config, string tomlPath, ICollection<string>? notes = null)
    {
        if (!File.Exists(tomlPath)) throw new SdLoraException($"--config {tomlPath}: file not found");
        TomlTable table;
        try { table = TomlSerializer.Deserialize<TomlTable>(File.ReadAllText(tomlPath))!; }
        catch (TomlException e) { throw new SdLoraException($"{tomlPath}: not valid TOML: {FirstLine(e.Message)}"); }
        var flat = new Dictionary<string, object?>(StringComparer.OrdinalIgnoreCase);
        Flatten(table, flat, tomlPath);
        return Apply(config, flat, tomlPath, notes);
    }

    private static void Flatten(TomlTable table, Dictionary<string, object?> into, string file)
    {
        foreach (var (key, value) in table)
        {
            if (value is TomlTable sub) { Flatten(sub, into, file); continue; }
            if (!into.TryAdd(key, value)) throw new SdLoraException($"{file}: key '{key}' is set twice (in two sections); keep one");
        }
    }

    /// <summary>Applies named values (flag names, kebab or snake case) on top of <paramref name="config"/>.</summary>
    public static TrainingConfig Apply(TrainingConfig config, IReadOnlyDictionary<string, object?> values, string source, ICollection<string>? notes = null)
    {
        var result = config with { };
        foreach (var (rawKey, value) in values)
        {
            var key = Normalize(rawKey);
            if (IgnoredKohyaKeys.Contains(key)) { notes?.Add($"{source}: '{rawKey}' is a kohya setting sdlora handles itself; ignored"); continue; }
            if (!Properties.Value.TryGetValue(key, out var prop))
            {
                var near = Properties.Value.Keys.OrderBy(k => Distance(k, key)).First();
                throw new SdLoraException($"{source}: unknown option '{rawKey}' (did you mean '{near}'?)");
            }
            object? converted;
            try { converted = Convert(value, prop.PropertyType, key); }
            catch (SdLoraException) { throw; }
            catch (Exception e) when (e is FormatException or OverflowException or InvalidCastException)
            { converted = null; Fail(source, key, value, prop.PropertyType); }
            prop.SetValue(result, converted);
        }
        return result;
    }

    /// <summary>
    /// Splits raw command-line tokens into (<c>--config</c> path, explicitly-set options) for <see cref="Load"/>:
    /// <c>--flag value</c>, <c>--flag=value</c>, and bare <c>--bool-flag</c> meaning true. Flag names are checked later.
    /// </summary>
    public static (string? ConfigPath, Dictionary<string, object?> Options) ParseCommandLine(IReadOnlyList<string> args)
    {
        var options = new Dictionary<string, object?>(StringComparer.OrdinalIgnoreCase);
        string? config = null;
        for (int i = 0; i < args.Count; i++)
        {
            var a = args[i];
            if (!a.StartsWith("--")) throw new SdLoraException($"unexpected argument '{a}': options look like --name value");
            string name = a[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0) { value = name[(eq + 1)..]; name = name[..eq]; }
            var key = Normalize(name);
            bool isBool = Properties.Value.TryGetValue(key, out var prop) && (Nullable.GetUnderlyingType(prop.PropertyType) ?? prop.PropertyType) == typeof(bool);
            if (value is null)
            {
                if (isBool && (i + 1 >= args.Count || args[i + 1].StartsWith("--") || !IsBoolText(args[i + 1]))) value = "true";
                else if (i + 1 < args.Count && !args[i + 1].StartsWith("--")) value = args[++i];
                else throw new SdLoraException($"--{name} needs a value");
            }
            if (key == "config") config = value;
            else if (key == "optimizer-args" && options.TryGetValue(key, out var prev) && prev is string p) options[key] = p + " " + value;
            else options[key] = value;
        }
        return (config, options);
    }

    private static bool IsBoolText(string s) => s.Trim().ToLowerInvariant() is "true" or "false" or "1" or "0" or "yes" or "no" or "on" or "off";

    private static string Normalize(string key)
    {
        var k = key.Trim().TrimStart('-').Replace('_', '-').ToLowerInvariant();
        return Aliases.TryGetValue(k, out var alias) ? alias : k;
    }

    private static object? Convert(object? value, Type type, string key)
    {
        var underlying = Nullable.GetUnderlyingType(type);
        bool nullable = underlying is not null || !type.IsValueType;
        var t = underlying ?? type;
        if (value is null || value is string { Length: 0 } || value is string s0 && s0.Equals("none", StringComparison.OrdinalIgnoreCase) && t != typeof(string))
        {
            if (nullable) return null;
            throw new FormatException();
        }
        if (t == typeof(string)) return value is string s ? s : System.Convert.ToString(value, CultureInfo.InvariantCulture);
        if (t == typeof(int))
        {
            if (value is string si) return int.Parse(si, NumberStyles.Integer, CultureInfo.InvariantCulture);
            if (value is double d && d != Math.Floor(d)) throw new FormatException();
            return System.Convert.ToInt32(value, CultureInfo.InvariantCulture);
        }
        if (t == typeof(double))
            return value is string sd ? double.Parse(sd, NumberStyles.Float, CultureInfo.InvariantCulture) : System.Convert.ToDouble(value, CultureInfo.InvariantCulture);
        if (t == typeof(bool))
            return value switch
            {
                bool b => b,
                string sb when sb.Trim().ToLowerInvariant() is "true" or "1" or "yes" or "on" => true,
                string sb when sb.Trim().ToLowerInvariant() is "false" or "0" or "no" or "off" => false,
                _ => throw new FormatException(),
            };
        if (t == typeof(Resolution))
            return value switch
            {
                Resolution r => r,
                string sr => Resolution.Parse(sr),
                long or int => Resolution.Square(System.Convert.ToInt32(value, CultureInfo.InvariantCulture)),
                IList list when list.Count is 1 or 2 => new Resolution(System.Convert.ToInt32(list[0], CultureInfo.InvariantCulture),
                    System.Convert.ToInt32(list[^1], CultureInfo.InvariantCulture)),
                _ => throw new FormatException(),
            };
        if (t == typeof(IReadOnlyList<string>))
            return value switch
            {
                string sl => sl.Split(' ', StringSplitOptions.RemoveEmptyEntries).ToList(),
                IEnumerable e => e.Cast<object?>().Select(o => System.Convert.ToString(o, CultureInfo.InvariantCulture) ?? "").ToList(),
                _ => throw new FormatException(),
            };
        throw new InvalidOperationException($"no converter for option '{key}' of type {t.Name}");
    }

    private static void Fail(string source, string key, object? value, Type type)
    {
        var t = Nullable.GetUnderlyingType(type) ?? type;
        string want = t == typeof(int) ? "a whole number" : t == typeof(double) ? "a number" : t == typeof(bool) ? "true or false"
            : t == typeof(Resolution) ? "a size like 512 or 512,768" : t == typeof(string) ? "text" : "a list of strings";
        throw new SdLoraException($"{source}: --{key} must be {want} (got '{System.Convert.ToString(value, CultureInfo.InvariantCulture)}')");
    }

    private static string FirstLine(string s) => s.Split('\n')[0].Trim();

    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}
