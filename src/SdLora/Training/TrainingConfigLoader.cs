using Tomlyn;
using Tomlyn.Model;

namespace SdLora.Training;

/// <summary>
/// Builds a <see cref="TrainingConfig"/>: defaults, then a TOML file, then the values set explicitly by the caller (a
/// command line, a form), then <see cref="TrainingConfig.Validate"/>. Keys are the <see cref="TrainingSettings"/> names
/// (<c>train-batch-size</c>); kohya's snake_case names (<c>train_batch_size</c>, <c>pretrained_model_name_or_path</c>,
/// <c>optimizer_type</c>, ...) are accepted too, and tables (kohya's <c>[training_arguments]</c> sections) are flattened.
/// kohya options sdlora has no use for (<c>xformers</c>, <c>save_state</c>, ...) are accepted with a note.
/// </summary>
public static class TrainingConfigLoader
{
    /// <summary>Loads defaults + <paramref name="tomlPath"/> (optional) + <paramref name="overrides"/>, then validates.</summary>
    /// <param name="overrides">Settings given explicitly (they beat the file), by name in any spelling: raw strings or typed values.</param>
    /// <param name="notes">Receives one line for each accepted-but-ignored kohya option.</param>
    public static TrainingConfig Load(string? tomlPath, IReadOnlyDictionary<string, object?>? overrides = null,
        bool validate = true, ICollection<string>? notes = null)
    {
        var config = new TrainingConfig();
        if (tomlPath is not null) config = ApplyToml(config, tomlPath, notes);
        if (overrides is not null) config = Apply(config, overrides, null, notes);
        return validate ? config.Validate() : config;
    }

    public static TrainingConfig ApplyToml(TrainingConfig config, string tomlPath, ICollection<string>? notes = null)
    {
        if (!File.Exists(tomlPath)) throw new SdLoraException($"{tomlPath}: settings file not found");
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

    /// <summary>Applies named values (setting names in any spelling; raw strings or typed values) on top of <paramref name="config"/>.</summary>
    /// <param name="source">Where the values come from, for messages (a file name); null for values the user set directly.</param>
    public static TrainingConfig Apply(TrainingConfig config, IReadOnlyDictionary<string, object?> values, string? source = null, ICollection<string>? notes = null)
    {
        var result = config;
        // The method first: it decides the defaults that the other values are set against (see TrainingConfig.WithMethod).
        foreach (var (rawKey, value) in values.OrderBy(kv => TrainingSettings.Find(kv.Key)?.Name == "method" ? 0 : 1))
        {
            if (TrainingSettings.FindKohyaOnly(rawKey) is { } kohyaOnly)
            {
                if (kohyaOnly.Note(value) is { } note) notes?.Add(source is null ? note : $"{source}: {note}");
                if (kohyaOnly.Apply is { } apply) result = apply(result, value);
                continue;
            }
            var setting = TrainingSettings.Find(rawKey);
            if (setting is null)
            {
                var key = TrainingSettings.Normalize(rawKey);
                var near = TrainingSettings.All.Select(s => s.Name).OrderBy(n => Distance(n, key)).First();
                throw new SdLoraException($"{(source is null ? "" : source + ": ")}unknown setting '{rawKey}' (did you mean '{near}'?)");
            }
            result = setting.With(result, setting.Convert(value, source));
        }
        return result;
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
