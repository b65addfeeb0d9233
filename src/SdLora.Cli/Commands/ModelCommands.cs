using System.CommandLine;
using System.Text.Json;
using SdLora.Checkpoints;
using Spectre.Console;

namespace SdLora.Cli.Commands;

public static class ModelCommands
{
    public static Command Create(CliContext cli)
    {
        var model = new Command("model", "inspect Stable Diffusion checkpoints");
        model.Subcommands.Add(Inspect(cli));
        return model;
    }

    private static Command Inspect(CliContext cli)
    {
        var path = new Argument<string>("path") { Description = "checkpoint file (.safetensors, .ckpt) or diffusers model folder" };
        var config = new Option<string?>("--config") { Description = "LDM YAML config (default: NAME.yaml beside the file, else dims from tensor shapes)" };
        var json = new Option<bool>("--json") { Description = "print the report as JSON" };
        var cmd = new Command("inspect", "show a checkpoint's family, layout, dtypes, parameter counts and whether sdlora can use it") { path, config, json };
        cmd.SetAction(parse =>
        {
            var report = CheckpointInspector.Inspect(parse.GetValue(path)!, parse.GetValue(config));
            if (parse.GetValue(json)) cli.Console.Profile.Out.Writer.WriteLine(JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
            else Print(cli, report);
            return report.Usable ? ExitCodes.Ok : ExitCodes.Failed;
        });
        return cmd;
    }

    private static void Print(CliContext cli, CheckpointReport r)
    {
        var t = new Table().Border(TableBorder.Rounded).AddColumn("").AddColumn("");
        t.HideHeaders();
        t.AddRow("path", Markup.Escape(r.Path));
        t.AddRow("family", Markup.Escape($"{r.Family} — {r.Description}"));
        t.AddRow("layout", Markup.Escape(r.Layout));
        t.AddRow("size", $"{r.FileBytes / 1e9:F2} GB, {r.TensorCount} tensors");
        t.AddRow("dtypes", Markup.Escape(string.Join(", ", r.DTypeCounts.OrderByDescending(x => x.Value).Select(x => $"{x.Key}: {x.Value}"))));
        if (r.ConfigSource != null) t.AddRow("config from", Markup.Escape(r.ConfigSource));
        if (r.Schedule != null) t.AddRow("prediction", Markup.Escape($"{r.Schedule.PredictionType} (from the config; weights cannot tell)"));
        t.AddRow("usable", r.Usable ? "[green]yes[/]" : $"[red]no[/]: {Markup.Escape(r.WhyNot ?? "")}");
        cli.Console.Write(t);

        if (r.Parts.Count > 0)
        {
            var parts = new Table().Border(TableBorder.Rounded).AddColumn("part").AddColumn(new TableColumn("tensors").RightAligned()).AddColumn(new TableColumn("parameters").RightAligned());
            foreach (var p in r.Parts) parts.AddRow(Markup.Escape(p.Part), p.Tensors.ToString("N0"), p.Parameters.ToString("N0"));
            parts.AddRow("[bold]total[/]", r.Parts.Sum(p => p.Tensors).ToString("N0"), r.Parts.Sum(p => p.Parameters).ToString("N0"));
            cli.Console.Write(parts);
        }
        if (r.IgnoredKeyGroups.Count > 0)
        {
            var ign = new Table().Border(TableBorder.Rounded).AddColumn("ignored keys").AddColumn(new TableColumn("count").RightAligned());
            foreach (var (g, n) in r.IgnoredKeyGroups) ign.AddRow(Markup.Escape(g), n.ToString("N0"));
            cli.Console.Write(ign);
        }
    }
}
