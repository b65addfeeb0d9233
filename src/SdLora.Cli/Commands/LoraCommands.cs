using System.CommandLine;
using System.Globalization;
using SdLora.Lora;
using Spectre.Console;
using TorchSharp;

namespace SdLora.Cli.Commands;

/// <summary><c>sdlora lora inspect|merge|extract|resize</c>: parsing and presentation over SdLora.Lora.</summary>
public static class LoraCommands
{
    public static Command Create(CliContext cli)
    {
        var lora = new Command("lora", "inspect, merge, extract and resize LoRA files");
        lora.Subcommands.Add(Inspect(cli));
        lora.Subcommands.Add(Merge(cli));
        lora.Subcommands.Add(Extract(cli));
        lora.Subcommands.Add(Resize(cli));
        return lora;
    }

    private static Command Inspect(CliContext cli)
    {
        var file = new Argument<string>("file") { Description = "LoRA .safetensors file" };
        var all = new Option<bool>("--modules") { Description = "list every module" };
        var cmd = new Command("inspect", "show a LoRA's format, metadata, ranks and modules") { file, all };
        cmd.SetAction(r =>
        {
            var info = LoraInspector.Inspect(r.GetValue(file)!);
            cli.Console.MarkupLine($"[bold]{Markup.Escape(info.Path)}[/]  {info.FileSize / 1024.0 / 1024.0:F2} MiB, {info.DType}, dialect {info.Dialect}");
            cli.Console.MarkupLine($"modules: {info.Modules.Count} (UNet {info.UnetModules}, text encoder {info.TextEncoderModules}), parameters {info.ParameterCount:N0}");
            foreach (var g in info.Modules.GroupBy(m => (m.Kind, m.Rank, m.Alpha)).OrderBy(g => g.Key.Kind))
                cli.Console.MarkupLine($"  {g.Count(),4} x {g.Key.Kind,-8} rank {g.Key.Rank}, alpha {g.Key.Alpha.ToString(CultureInfo.InvariantCulture)}");
            foreach (var w in info.Words ?? [])
                cli.Console.MarkupLine($"word: [bold]{Markup.Escape(w.Word)}[/] ({w.Vectors} vector(s), {Markup.Escape(w.Source)}): used in prompts while this LoRA is in use");
            if (info.UnknownKeys.Count > 0)
                cli.Console.MarkupLine($"[yellow]{info.UnknownKeys.Count} keys not understood[/] (first: {Markup.Escape(string.Join(", ", info.UnknownKeys.Take(3)))})");
            if (info.Metadata.Count > 0)
            {
                var t = new Table().AddColumn("metadata").AddColumn("value");
                foreach (var (k, v) in info.Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                    t.AddRow(Markup.Escape(k), Markup.Escape(v.Length > 120 ? v[..117] + "..." : v));
                cli.Console.Write(t);
            }
            if (r.GetValue(all))
            {
                var t = new Table().AddColumn("module").AddColumn("kind").AddColumn("rank").AddColumn("alpha");
                foreach (var m in info.Modules) t.AddRow(Markup.Escape(m.Name), m.Kind, m.Rank.ToString(), m.Alpha.ToString(CultureInfo.InvariantCulture));
                cli.Console.Write(t);
            }
            return ExitCodes.Ok;
        });
        return cmd;
    }

    private static Command Merge(CliContext cli)
    {
        var model = new Option<string>("--model", "-m") { Description = "diffusers model folder or single-file checkpoint (.safetensors or .ckpt)", Required = true };
        var loras = new Option<string[]>("--lora") { Description = "LoRA file, optionally with a weight: PATH[:WEIGHT] (repeatable)", Required = true, AllowMultipleArgumentsPerToken = false };
        var output = CliOptions.Out("output folder (diffusers input) or .safetensors file (single-file input)");
        var overwrite = CliOptions.Overwrite();
        var fp16 = new Option<bool>("--fp16") { Description = "store the merged weights as fp16" };
        var cmd = new Command("merge", "merge LoRA files into a checkpoint (written atomically, in the input's layout)") { model, loras, output, overwrite, fp16 };
        cmd.SetAction(r =>
        {
            var specs = r.GetValue(loras)!.Select(LoraUse.Parse).ToList();
            var report = LoraCheckpointMerge.Merge(r.GetValue(model)!, specs, r.GetValue(output)!, r.GetValue(fp16), r.GetValue(overwrite),
                new SyncProgress<string>(s => cli.Console.MarkupLine($"[grey]{Markup.Escape(s)}[/]")), cli.Cancellation);
            foreach (var m in report.Matches)
            {
                cli.Console.MarkupLine($"{Markup.Escape(m.File)}: {m.Matched.Count} modules merged");
                if (m.Warning is { } w) cli.Console.MarkupLine($"[yellow]warning:[/] {Markup.Escape(w)}");
            }
            cli.Console.MarkupLine($"wrote {Markup.Escape(report.Output)} ({report.LayersChanged} layers changed)");
            return ExitCodes.Ok;
        });
        return cmd;
    }

    private static Command Extract(CliContext cli)
    {
        var baseModel = new Option<string>("--base") { Description = "original model: diffusers folder or single-file checkpoint (.safetensors or .ckpt)", Required = true };
        var tuned = new Option<string>("--tuned") { Description = "fine-tuned model: diffusers folder or single-file checkpoint (.safetensors or .ckpt)", Required = true };
        var rank = new Option<int>("--rank") { Description = "LoRA rank", DefaultValueFactory = _ => 4 };
        var convRank = new Option<int?>("--conv-rank") { Description = "rank for 3x3 convs (default: no conv LoRA)" };
        var clamp = new Option<double>("--clamp-quantile") { Description = "clamp factors at this quantile (kohya 0.99; 1 = off)", DefaultValueFactory = _ => 0.99 };
        var fp32 = new Option<bool>("--fp32") { Description = "save fp32 instead of fp16" };
        var output = CliOptions.Out("output LoRA .safetensors");
        var overwrite = CliOptions.Overwrite();
        var cmd = new Command("extract", "extract a LoRA from the difference of two models (SVD, as kohya's extract_lora_from_models)") { baseModel, tuned, rank, convRank, clamp, fp32, output, overwrite };
        cmd.SetAction(r =>
        {
            using var a = LoraModelSource.Open(r.GetValue(baseModel)!);
            using var b = LoraModelSource.Open(r.GetValue(tuned)!);
            var options = new LoraExtractOptions
            {
                Rank = r.GetValue(rank), ConvRank = r.GetValue(convRank), ClampQuantile = r.GetValue(clamp),
                SaveDType = r.GetValue(fp32) ? torch.ScalarType.Float32 : torch.ScalarType.Float16, SdModelName = Path.GetFileName(r.GetValue(baseModel)),
            };
            var reports = LoraSvd.ExtractToFile(a, b, r.GetValue(output)!, options, r.GetValue(overwrite),
                new SyncProgress<string>(s => cli.Console.MarkupLine($"[grey]{Markup.Escape(s)}[/]")), cli.Cancellation);
            PrintReports(cli, reports);
            cli.Console.MarkupLine($"wrote {Markup.Escape(r.GetValue(output)!)} ({reports.Count} modules)");
            return ExitCodes.Ok;
        });
        return cmd;
    }

    private static Command Resize(CliContext cli)
    {
        var file = new Argument<string>("file") { Description = "LoRA to resize" };
        var rank = new Option<int>("--rank") { Description = "new rank (maximum rank with --dynamic)", DefaultValueFactory = _ => 4 };
        var convRank = new Option<int?>("--conv-rank") { Description = "new rank for 3x3 conv modules (default: --rank)" };
        var dynamic = new Option<string?>("--dynamic") { Description = "METHOD:VALUE with METHOD sv_ratio, sv_fro or sv_cumulative (e.g. sv_fro:0.9)" };
        var fp32 = new Option<bool>("--fp32") { Description = "save fp32 instead of fp16" };
        var output = CliOptions.Out("output LoRA .safetensors");
        var overwrite = CliOptions.Overwrite();
        var cmd = new Command("resize", "re-factorise a LoRA to another rank by SVD (as kohya's resize_lora), reporting retained energy") { file, rank, convRank, dynamic, fp32, output, overwrite };
        cmd.SetAction(r =>
        {
            var options = new LoraResizeOptions { Rank = r.GetValue(rank), ConvRank = r.GetValue(convRank), SaveDType = r.GetValue(fp32) ? torch.ScalarType.Float32 : torch.ScalarType.Float16 };
            if (r.GetValue(dynamic) is { } d)
            {
                var parts = d.Split(':', 2);
                if (parts.Length != 2 || !double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var p))
                    throw new SdLoraException($"--dynamic '{d}': write METHOD:VALUE, e.g. sv_fro:0.9");
                options = options with { Method = LoraResizeOptions.ParseMethod(parts[0]), Parameter = p };
            }
            var reports = LoraSvd.ResizeFile(r.GetValue(file)!, r.GetValue(output)!, options, r.GetValue(overwrite), cli.Cancellation);
            PrintReports(cli, reports);
            cli.Console.MarkupLine($"wrote {Markup.Escape(r.GetValue(output)!)}; mean Frobenius retained {reports.Average(x => x.FrobeniusRetained):P2}");
            return ExitCodes.Ok;
        });
        return cmd;
    }

    private static void PrintReports(CliContext cli, IReadOnlyList<LoraSvdModuleReport> reports)
    {
        var t = new Table().AddColumn("module").AddColumn("rank").AddColumn("alpha").AddColumn("sum(S) kept").AddColumn("Frobenius kept");
        foreach (var x in reports)
            t.AddRow(Markup.Escape(x.Name), $"{x.OldRank}->{x.NewRank}", x.NewAlpha.ToString("G4", CultureInfo.InvariantCulture), x.SumRetained.ToString("P1", CultureInfo.InvariantCulture), x.FrobeniusRetained.ToString("P2", CultureInfo.InvariantCulture));
        cli.Console.Write(t);
    }
}
