using System.CommandLine;

namespace SdLora.Cli.Commands;

/// <summary>Options several commands share, declared once and spelled the same everywhere.</summary>
public static class CliOptions
{
    public static Option<string?> Model() => new("--model", "-m")
    {
        Description = "SD1.x checkpoint: a .safetensors/.ckpt file or a diffusers folder (default: the bundled tiny test model)",
    };

    public static Option<string?> Config() => new("--config")
    {
        Description = "LDM YAML config for a single-file checkpoint (default: NAME.yaml beside it, else dims from tensor shapes)",
    };

    /// <summary>Where a command writes: <c>--out</c> everywhere (<c>--output</c> and <c>-o</c> are accepted too).</summary>
    public static Option<string> Out(string description, string? defaultValue = null)
    {
        var option = new Option<string>("--out", "--output", "-o") { Description = description };
        if (defaultValue is not null) option.DefaultValueFactory = _ => defaultValue;
        else option.Required = true;
        return option;
    }

    /// <summary><c>--overwrite</c>: replace an existing output (without it, a command refuses to replace anything).</summary>
    public static Option<bool> Overwrite(string description = "replace the output if it already exists (default: refuse)") =>
        new("--overwrite") { Description = description };

    /// <summary>The bundled tiny SD1.5-shaped model with random weights (tests, demos, trying the commands out).</summary>
    public static string BundledTinyModel => Path.Combine(AppContext.BaseDirectory, "assets", "tiny-sd15");

    public static string ResolveModel(string? model, CliContext cli)
    {
        if (model is not null) return model;
        cli.Note("no --model given: using the bundled tiny random-weight model (it makes noise, not pictures); pass --model v1-5-pruned-emaonly.safetensors for real images");
        return BundledTinyModel;
    }
}

/// <summary><c>--device</c> and <c>--dtype</c>, declared once for every command that computes.</summary>
public sealed class ComputeArguments
{
    public Option<string> Device { get; } = new("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };

    /// <summary><c>--dtype</c>: <c>auto</c> by default (see <see cref="CliCompute"/>).</summary>
    public Option<string> DType { get; }

    /// <param name="dtypeDescription">what the precisions mean for this command (default: auto, fp32, bf16, fp16)</param>
    public ComputeArguments(string dtypeDescription = CliCompute.DTypeDescription)
    {
        DType = new Option<string>("--dtype") { Description = dtypeDescription, DefaultValueFactory = _ => "auto" };
    }

    public void AddTo(Command command)
    {
        command.Options.Add(Device);
        command.Options.Add(DType);
    }

    /// <summary>
    /// The choice for this machine (<c>auto</c> and CPU bf16 decided by the cached CPU kernel probe); notes what auto
    /// chose (to <paramref name="note"/>, default a grey line with the output) and choices that work but surprise (fp16 on a CPU).
    /// </summary>
    public ComputeOptions Read(ParseResult parse, CliContext cli, Action<string>? note = null)
    {
        var compute = CliCompute.Resolve(parse.GetValue(Device)!, parse.GetValue(DType)!, cli, note);
        cli.NoteCompute(compute);
        return compute;
    }
}
