namespace SdLora.Sampling;

/// <summary>
/// Samplers by name: the AUTOMATIC1111 names ("Euler a", written into PNG parameters) and the short CLI
/// forms (<c>euler_a</c>), both case-insensitive.
/// </summary>
public static class SamplerCatalog
{
    private sealed record Entry(string Name, string ShortName, string[] Aliases, Func<ISampler> Create);

    private static readonly Entry[] _entries =
    [
        new("Euler a", "euler_a", ["euler_ancestral", "k_euler_a", "k_euler_ancestral"], () => new EulerAncestralSampler()),
        new("Euler", "euler", ["k_euler"], () => new EulerSampler()),
        new("DDIM", "ddim", [], () => new DdimSampler()),
        new("DPM++ 2M", "dpmpp_2m", ["k_dpmpp_2m"], () => new DpmSolverPlusPlus2MSampler()),
        new("DPM++ 2M Karras", "dpmpp_2m_karras", ["k_dpmpp_2m_karras"], () => new DpmSolverPlusPlus2MSampler(useKarrasSigmas: true)),
        new("LMS", "lms", ["k_lms"], () => new LmsSampler()),
        new("PLMS", "plms", ["pndm"], () => new PndmSampler()),
        new("Heun", "heun", ["k_heun"], () => new HeunSampler()),
        new("DDPM", "ddpm", [], () => new DdpmSampler()),
    ];

    /// <summary>The A1111 names, for help text and PNG metadata.</summary>
    public static IReadOnlyList<string> Names { get; } = _entries.Select(e => e.Name).ToArray();
    /// <summary>The short forms, in the same order as <see cref="Names"/>.</summary>
    public static IReadOnlyList<string> ShortNames { get; } = _entries.Select(e => e.ShortName).ToArray();

    /// <summary>A new sampler for an A1111 name or short form; unknown names get a message listing the valid ones.</summary>
    public static ISampler Get(string name) => Find(name).Create();

    /// <summary>The A1111 name for any accepted name ("euler_a" -> "Euler a").</summary>
    public static string A1111Name(string name) => Find(name).Name;

    /// <summary>The short form for any accepted name ("DPM++ 2M Karras" -> "dpmpp_2m_karras").</summary>
    public static string ShortName(string name) => Find(name).ShortName;

    public static bool TryGet(string name, out ISampler? sampler)
    {
        var entry = Lookup(name);
        sampler = entry?.Create();
        return entry != null;
    }

    private static Entry Find(string name) => Lookup(name) ?? throw new SdLoraException(
        $"unknown sampler '{name}': use one of {string.Join(", ", Names.Select(n => $"\"{n}\""))} (or {string.Join(", ", ShortNames)})");

    private static Entry? Lookup(string name)
    {
        var n = name.Trim();
        return _entries.FirstOrDefault(e => e.Name.Equals(n, StringComparison.OrdinalIgnoreCase)
            || e.ShortName.Equals(n, StringComparison.OrdinalIgnoreCase)
            || e.Aliases.Any(a => a.Equals(n, StringComparison.OrdinalIgnoreCase)));
    }
}
