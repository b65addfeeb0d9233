using System.Globalization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using SdLora.Sampling;
using SdLora.Training;
using SdLora.Web.Api;
using SdLora.Web.Jobs;
using static SdLora.Web.Pages.Html;

namespace SdLora.Web.Pages;

/// <summary>The pages: Generate, Datasets (and one dataset), Train (and one run), Models, Jobs (and one job).</summary>
public static class PageRoutes
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/", () => Results.Redirect("/generate")).ExcludeFromDescription();
        app.MapGet("/generate", Generate).ExcludeFromDescription();
        app.MapGet("/datasets", DatasetList).ExcludeFromDescription();
        app.MapGet("/datasets/{name}", Dataset).ExcludeFromDescription();
        app.MapGet("/train", Train).ExcludeFromDescription();
        app.MapGet("/runs/{name}", Run).ExcludeFromDescription();
        app.MapGet("/models", Models).ExcludeFromDescription();
        app.MapGet("/jobs", Jobs).ExcludeFromDescription();
        app.MapGet("/jobs/{id}", Job).ExcludeFromDescription();
    }

    private static string Options(IEnumerable<string> values, string? selected = null) =>
        string.Join("", values.Select(v => $"<option{(v == selected ? " selected" : "")}>{H(v)}</option>"));

    private static string Current(ModelCatalog c)
    {
        try { return c.Checkpoint(null).Name; }
        catch (ApiException) { return ""; }
    }

    private static IResult Generate(ModelCatalog catalog)
    {
        var models = catalog.Checkpoints().Select(m => m.Name).ToList();
        var loras = catalog.Loras().Select(l => l.Name).ToList();
        var body = $$"""
            <h1>Generate</h1>
            <div class="cols">
            <form id="gen" class="panel" autocomplete="off">
              <label>Prompt<textarea name="prompt" rows="3" placeholder="a photo of sks dog on a beach, (detailed:1.2) <lora:NAME:0.8>"></textarea></label>
              <label>Negative prompt<textarea name="negative_prompt" rows="2" placeholder="blurry, low quality"></textarea></label>
              <div class="row">
                <label>Checkpoint<select name="model">{{Options(models, Current(catalog))}}</select></label>
                <label>Sampler<select name="sampler_name">{{Options(SamplerCatalog.Names, "Euler a")}}</select></label>
              </div>
              <div class="row">
                <label>Steps<input name="steps" type="number" min="1" max="150" value="20"></label>
                <label>CFG scale<input name="cfg_scale" type="number" step="0.5" min="0" max="30" value="7"></label>
                <label>Width<input name="width" type="number" step="8" min="64" max="2048" value="512"></label>
                <label>Height<input name="height" type="number" step="8" min="64" max="2048" value="512"></label>
              </div>
              <div class="row">
                <label class="wide">Seed<span class="inline"><input name="seed" type="number" value="-1"><button type="button" id="seed-random" title="a new random seed each time (-1)">Random</button><button type="button" id="seed-last" title="the last image's seed">Last</button></span></label>
                <label>Batch size<input name="batch_size" type="number" min="1" max="16" value="1"></label>
                <label>Batch count<input name="n_iter" type="number" min="1" max="100" value="1"></label>
                <label>Clip skip<input name="clip_skip" type="number" min="1" max="12" value="1"></label>
              </div>
              <div class="row lora-row">
                <label>LoRA<select id="lora-pick">{{(loras.Count == 0 ? "<option value=\"\">(none in the LoRA folder)</option>" : Options(loras))}}</select></label>
                <label>Weight<input id="lora-weight" type="number" step="0.05" value="0.8"></label>
                <button type="button" id="lora-add">Insert &lt;lora&gt;</button>
              </div>
              <div class="actions"><button class="primary" id="generate">Generate</button><button type="button" id="interrupt">Interrupt</button></div>
              <div id="progress" class="progress" hidden><div class="bar"></div><span class="label"></span></div>
              <p id="error" class="error" role="alert"></p>
            </form>
            <section class="panel">
              <div id="detail" class="detail" hidden></div>
              <h2>Gallery</h2>
              <div id="gallery" class="gallery"></div>
            </section>
            </div>
            """;
        return Page("Generate", "/generate", body, "generate.js");
    }

    private static IResult DatasetList(Datasets datasets)
    {
        var rows = string.Join("", datasets.List().Select(d =>
            $"<tr><td><a href=\"/datasets/{U(d.Name)}\">{H(d.Name)}</a></td><td>{d.Images}</td><td>{d.Captioned}</td><td class=\"muted\">{H(d.Layout)}</td></tr>"));
        var body = $$"""
            <h1>Datasets</h1>
            <div class="cols">
            <section class="panel">
              <table class="list"><thead><tr><th>Name</th><th>Images</th><th>Captioned</th><th>How training reads it</th></tr></thead>
              <tbody>{{(rows.Length == 0 ? "<tr><td colspan=\"4\" class=\"muted\">No datasets yet: create one, then upload 3-20 photos of your subject.</td></tr>" : rows)}}</tbody></table>
            </section>
            <form id="create" class="panel narrow">
              <h2>New dataset</h2>
              <label>Name<input name="name" required placeholder="my-dog" pattern="[A-Za-z0-9 ._\-]{1,64}"></label>
              <label>Instance prompt<input name="instance_prompt" placeholder="a photo of sks dog"></label>
              <label>Class prompt <small>(prior preservation; empty = off)</small><input name="class_prompt" placeholder="a photo of a dog"></label>
              <label>Repeats<input name="repeats" type="number" min="1" max="1000" value="10"></label>
              <button class="primary">Create</button>
              <p id="error" class="error" role="alert"></p>
            </form>
            </div>
            """;
        return Page("Datasets", "/datasets", body, "datasets.js");
    }

    private static IResult Dataset(string name, Datasets datasets, ModelCatalog catalog)
    {
        var d = datasets.Detail(name);
        var body = $$"""
            <h1>Dataset <span class="name">{{H(d.Name)}}</span></h1>
            <p class="layout muted" id="layout">{{H(d.Layout)}}</p>
            <div class="cols">
            <section class="panel">
              <div class="toolbar">
                <label class="upload button">Upload photos or .zip<input id="upload" type="file" multiple accept="image/*,.zip" hidden></label>
                <span id="upload-status" class="muted"></span>
              </div>
              <div id="images" class="cards"></div>
            </section>
            <div class="side">
            <form id="settings" class="panel narrow">
              <h2>Training prompts</h2>
              <label>Instance prompt<input name="instance_prompt" value="{{H(d.Settings.InstancePrompt)}}" placeholder="a photo of sks dog"></label>
              <label>Class prompt<input name="class_prompt" value="{{H(d.Settings.ClassPrompt)}}" placeholder="a photo of a dog"></label>
              <label>Repeats<input name="repeats" type="number" min="1" max="1000" value="{{d.Settings.Repeats}}"></label>
              <button>Save</button>
            </form>
            <form id="caption" class="panel narrow">
              <h2>Caption with BLIP</h2>
              {{(catalog.HasBlip ? "" : "<p class=\"warn\">No BLIP model in the models folder (models/blip): captioning needs one.</p>")}}
              <label>Prefix<input name="prefix" placeholder="sks dog, "></label>
              <label class="check"><input type="checkbox" name="overwrite"> replace existing captions</label>
              <button class="primary">Caption all</button>
              <div id="caption-progress" class="progress" hidden><div class="bar"></div><span class="label"></span></div>
              <p id="error" class="error" role="alert"></p>
            </form>
            <p class="panel narrow"><a class="button primary" href="/train?dataset={{U(d.Name)}}">Train a LoRA on this dataset →</a></p>
            </div>
            </div>
            {{Data(new { dataset = d })}}
            """;
        return Page($"Dataset {d.Name}", "/datasets", body, "dataset.js");
    }

    /// <summary>The most used settings up front (kohya colab defaults), the rest folded under Advanced; names are the train flags.</summary>
    private static readonly (string Flag, string Label, string Value, string Hint)[] MainSettings =
    [
        ("max-train-steps", "Max train steps", "", "empty = epochs decide"),
        ("max-train-epochs", "Epochs", "10", ""),
        ("resolution", "Resolution", "512", "e.g. 512 or 512,768"),
        ("network-dim", "Network dim (rank)", "32", ""),
        ("network-alpha", "Network alpha", "16", ""),
        ("learning-rate", "Learning rate (UNet)", "1e-4", ""),
        ("text-encoder-lr", "Text encoder LR", "5e-5", "0 = UNet only"),
        ("train-batch-size", "Batch size", "1", ""),
        ("num-class-images", "Class images", "", "8 on the CPU, 100 on a GPU"),
        ("seed", "Seed", "42", ""),
        ("save-every-n-epochs", "Save every N epochs", "", ""),
        ("sample-every-n-epochs", "Sample every N epochs", "", ""),
    ];

    private static readonly (string Flag, string Label, string Value, string Hint)[] AdvancedSettings =
    [
        ("optimizer", "Optimizer", "AdamW", "AdamW, Lion, Prodigy"),
        ("lr-scheduler", "LR scheduler", "constant", "constant, cosine, linear, ..."),
        ("lr-warmup-steps", "Warmup steps", "0", ""),
        ("mixed-precision", "Mixed precision", "no", "no, bf16, fp16"),
        ("save-precision", "Save precision", "fp16", ""),
        ("clip-skip", "Clip skip", "1", ""),
        ("prior-loss-weight", "Prior loss weight", "1.0", ""),
        ("noise-offset", "Noise offset", "0", ""),
        ("min-snr-gamma", "Min-SNR gamma", "", "e.g. 5"),
        ("conv-dim", "Conv dim (LoCon)", "", ""),
        ("conv-alpha", "Conv alpha", "", ""),
        ("network-dropout", "Network dropout", "", ""),
        ("max-grad-norm", "Max grad norm", "1.0", ""),
        ("gradient-accumulation-steps", "Gradient accumulation", "1", ""),
        ("keep-tokens", "Keep tokens", "0", ""),
        ("caption-dropout", "Caption dropout", "0", ""),
        ("min-bucket-reso", "Min bucket", "256", ""),
        ("max-bucket-reso", "Max bucket", "1024", ""),
        ("dtype", "Model dtype", "auto", "auto, fp32, bf16"),
        ("token-string", "New word (pivotal tuning)", "", "e.g. sks: its vectors train too"),
        ("init-word", "New word starts as", "", "e.g. dog (empty = random)"),
    ];

    private static readonly (string Flag, string Label, bool On)[] AdvancedSwitches =
    [
        ("enable-bucket", "Aspect-ratio buckets", true), ("cache-latents", "Cache latents", true), ("gradient-checkpointing", "Gradient checkpointing", false),
        ("flip-aug", "Flip augmentation", false), ("shuffle-caption", "Shuffle caption", false), ("network-train-unet-only", "Train UNet only", false),
    ];

    private static string Field((string Flag, string Label, string Value, string Hint) f) =>
        $"<label data-flag=\"{f.Flag}\">{H(f.Label)}<input name=\"{f.Flag}\" value=\"{H(f.Value)}\" placeholder=\"{H(f.Hint)}\"><span class=\"field-error\"></span></label>";

    private static IResult Train(Datasets datasets, ModelCatalog catalog, Runs runs, string? dataset)
    {
        var ds = datasets.List();
        var chosen = ds.FirstOrDefault(d => d.Name == dataset) ?? ds.FirstOrDefault();
        var runRows = string.Join("", runs.List().Select(r =>
            $"<tr><td><a href=\"/runs/{U(r.Name)}\">{H(r.Name)}</a></td><td>{r.Steps}</td><td>{(r.HasLora ? "yes" : "")}</td><td>{H(r.LastJobState)}</td></tr>"));
        var body = $$"""
            <h1>Train a LoRA</h1>
            <div class="cols">
            <form id="train" class="panel" autocomplete="off">
              <div class="row">
                <label data-flag="output-name">Run name<input name="run" required placeholder="sks-dog" pattern="[A-Za-z0-9 ._\-]{1,64}"><span class="field-error"></span></label>
                <label data-flag="data">Dataset<select name="dataset">{{Options(ds.Select(d => d.Name), chosen?.Name)}}</select><span class="field-error"></span></label>
                <label data-flag="model">Checkpoint<select name="model">{{Options(catalog.Checkpoints().Select(m => m.Name), Current(catalog))}}</select><span class="field-error"></span></label>
              </div>
              <div class="row">
                <label data-flag="instance-prompt">Instance prompt<input name="instance-prompt" value="{{H(chosen?.Settings.InstancePrompt)}}" placeholder="a photo of sks dog"><span class="field-error"></span></label>
                <label data-flag="class-prompt">Class prompt<input name="class-prompt" value="{{H(chosen?.Settings.ClassPrompt)}}" placeholder="a photo of a dog (empty = no prior preservation)"><span class="field-error"></span></label>
                <label data-flag="num-repeats">Repeats<input name="num-repeats" value="{{chosen?.Settings.Repeats ?? 10}}"><span class="field-error"></span></label>
              </div>
              <div class="grid">{{string.Join("", MainSettings.Select(Field))}}</div>
              <label data-flag="sample-prompts">Sample prompts <small>(one per line; kohya options --n negative --d seed --s steps --l cfg)</small>
                <textarea name="sample_prompts" rows="2" placeholder="a photo of sks dog on the beach --d 1 --s 20"></textarea><span class="field-error"></span></label>
              <details><summary>Advanced</summary>
                <div class="grid">{{string.Join("", AdvancedSettings.Select(Field))}}</div>
                <div class="switches">{{string.Join("", AdvancedSwitches.Select(s => $"<label class=\"check\" data-flag=\"{s.Flag}\"><input type=\"checkbox\" name=\"{s.Flag}\"{(s.On ? " checked" : "")}> {H(s.Label)}</label>"))}}</div>
              </details>
              <div class="actions"><button class="primary">Start training</button></div>
              <p id="error" class="error" role="alert"></p>
            </form>
            <section class="panel narrow">
              <h2>Runs</h2>
              <table class="list"><thead><tr><th>Run</th><th>Steps</th><th>LoRA</th><th>Last job</th></tr></thead>
              <tbody>{{(runRows.Length == 0 ? "<tr><td colspan=\"4\" class=\"muted\">No runs yet.</td></tr>" : runRows)}}</tbody></table>
            </section>
            </div>
            {{Data(new { datasets = ds })}}
            """;
        return Page("Train", "/train", body, "train.js");
    }

    private static IResult Run(string name, Runs runs)
    {
        var d = runs.Detail(name);
        var body = $$"""
            <h1>Run <span class="name">{{H(d.Name)}}</span> <span id="state" class="state"></span></h1>
            <div class="stats panel">
              <div><span class="k">Step</span><span id="step" class="v">–</span></div>
              <div><span class="k">Epoch</span><span id="epoch" class="v">–</span></div>
              <div><span class="k">Speed</span><span id="rate" class="v">–</span></div>
              <div><span class="k">ETA</span><span id="eta" class="v">–</span></div>
              <div><span class="k">Loss (smoothed)</span><span id="loss" class="v">–</span></div>
              <div class="actions"><button id="cancel" hidden>Cancel (saves state)</button><button id="resume" class="primary" hidden>Resume</button></div>
            </div>
            <div id="phase" class="progress" hidden><div class="bar"></div><span class="label"></span></div>
            <div class="cols">
            <section class="panel">
              <h2>Loss</h2>
              <div id="chart" class="chart"></div>
              <h2>Samples</h2>
              <div id="samples" class="gallery"></div>
            </section>
            <div class="side">
            <section class="panel narrow">
              <h2>LoRA files</h2>
              <ul id="loras" class="files"></ul>
              <p class="muted" id="use"></p>
            </section>
            <section class="panel narrow">
              <h2>Log</h2>
              <pre id="log" class="log"></pre>
            </section>
            </div>
            </div>
            {{Data(new { run = d.Name })}}
            """;
        return Page($"Run {d.Name}", "/train", body, "lib/uPlot.iife.min.js", "run.js");
    }

    private static IResult Models(ModelCatalog catalog, DataFolders folders)
    {
        var ckpts = string.Join("", catalog.Checkpoints().Select(c => ModelsApi.View(catalog, c)).Select(v =>
            $"<tr><td>{H(v.Name)}{(v.Current ? " <span class=\"tag\">current</span>" : "")}</td><td>{H(v.Family)}</td><td>{H(v.Layout)}</td>" +
            $"<td>{(v.Parameters is { } p ? (p / 1e6).ToString("0.0", CultureInfo.InvariantCulture) + " M" : "")}</td>" +
            $"<td>{H(v.DTypes is null ? "" : string.Join(", ", v.DTypes.Select(kv => $"{kv.Key} ×{kv.Value}")))}</td><td>{Size(v.Size)}</td>" +
            $"<td>{(v.Error is not null ? $"<span class=\"error\">{H(v.Error)}</span>" : v.Usable == true ? "yes" : H(v.WhyNot))}</td></tr>"));
        var loras = string.Join("", catalog.Loras().Select(l => ModelsApi.View(catalog, l, true)).Select(v =>
            $"<tr><td>{H(v.Name)}</td><td>{H(v.Dialect)}</td><td>{v.Rank}</td><td>{v.Alpha?.ToString(CultureInfo.InvariantCulture)}</td><td>{v.UnetModules} / {v.TextEncoderModules}</td><td>{Size(v.Size)}</td>" +
            $"<td>{(v.Metadata is { Count: > 0 } md ? $"<details><summary>{md.Count} keys</summary><dl>{string.Join("", md.Where(kv => kv.Value.Length < 300).Select(kv => $"<dt>{H(kv.Key)}</dt><dd>{H(kv.Value)}</dd>"))}</dl></details>" : H(v.Error))}</td>" +
            $"<td><a href=\"/api/loras/{U(v.Name)}/file\">download</a></td></tr>"));
        var body = $$"""
            <h1>Models</h1>
            <section class="panel">
              <h2>Checkpoints <small class="muted">{{H(folders.Checkpoints)}}</small></h2>
              <table class="list"><thead><tr><th>Name</th><th>Family</th><th>Layout</th><th>Parameters</th><th>Dtypes</th><th>Size</th><th>Usable</th></tr></thead>
              <tbody>{{(ckpts.Length == 0 ? "<tr><td colspan=\"7\" class=\"muted\">None: put SD1.x .safetensors/.ckpt files or diffusers folders here.</td></tr>" : ckpts)}}</tbody></table>
            </section>
            <section class="panel">
              <h2>LoRAs <small class="muted">{{H(folders.Loras)}}</small></h2>
              <table class="list"><thead><tr><th>Name</th><th>Format</th><th>Rank</th><th>Alpha</th><th>UNet / TE modules</th><th>Size</th><th>Metadata</th><th></th></tr></thead>
              <tbody>{{(loras.Length == 0 ? "<tr><td colspan=\"8\" class=\"muted\">None yet: finished training runs put their LoRA here.</td></tr>" : loras)}}</tbody></table>
            </section>
            <section class="panel">
              <h2>Merge LoRAs into a checkpoint</h2>
              {{MergeForm(catalog)}}
            </section>
            <section class="panel">
              <h2>Captioner</h2>
              <p>{{(catalog.HasBlip ? $"BLIP model found in {H(folders.Blip)}." : $"No BLIP model: put a Hugging Face BLIP folder (config.json, model.safetensors, vocab.txt, ...) in {H(folders.Blip)}.")}}</p>
            </section>
            """;
        return Page("Models", "/models", body, "models.js");
    }

    /// <summary><c>sdlora lora merge</c> as a form: a checkpoint, the LoRAs with their weights, the new checkpoint's name (a job).</summary>
    private static string MergeForm(ModelCatalog catalog)
    {
        var checkpoints = catalog.Checkpoints().ToList();
        var loras = catalog.Loras().ToList();
        if (checkpoints.Count == 0 || loras.Count == 0)
            return "<p class=\"muted\">Needs a checkpoint and at least one LoRA.</p>";
        var options = string.Join("", checkpoints.Select(c => $"<option value=\"{H(c.Name)}\">{H(c.Name)}</option>"));
        var rows = string.Join("", loras.Select(l =>
            $"<tr><td><label class=\"check\"><input type=\"checkbox\" name=\"lora\" value=\"{H(l.Name)}\"> {H(l.Name)}</label></td>" +
            $"<td><input type=\"number\" class=\"weight\" name=\"weight\" data-lora=\"{H(l.Name)}\" value=\"1\" step=\"0.05\" min=\"-4\" max=\"4\"></td></tr>"));
        return $$"""
            <form id="merge" class="form">
              <p class="muted">W' = W + weight · (alpha / rank) · up · down for each LoRA, in fp32; the result is a new checkpoint beside the others (the input is never changed).</p>
              <label>Checkpoint <select name="model">{{options}}</select></label>
              <table class="list"><thead><tr><th>LoRA</th><th>Weight</th></tr></thead><tbody>{{rows}}</tbody></table>
              <label>New checkpoint name <input name="name" required pattern="[A-Za-z0-9._-]+" placeholder="my-model-merged"></label>
              <label class="check"><input type="checkbox" name="fp16" checked> store fp16</label>
              <button type="submit">Merge</button> <span id="merge-error" class="error"></span>
            </form>
            """;
    }

    private static string JobRow(JobView j) =>
        $"<tr data-id=\"{H(j.Id)}\"><td><a href=\"/jobs/{U(j.Id)}\">{H(j.Title)}</a></td><td>{H(j.Type)}</td><td><span class=\"state {H(j.State)}\">{H(j.State)}</span></td>" +
        $"<td>{(j.Progress is { } p ? $"{H(p.Phase)} {p.Done}/{p.Total}" : "")}</td><td>{j.Created.ToLocalTime():yyyy-MM-dd HH:mm:ss}</td>" +
        $"<td>{(j.Started is { } s ? ((j.Finished ?? DateTimeOffset.UtcNow) - s).ToString(@"hh\:mm\:ss") : "")}</td>" +
        $"<td>{(j.State is JobStates.Queued or JobStates.Running ? $"<button class=\"cancel\" data-id=\"{H(j.Id)}\">Cancel</button>" : H(j.Error))}</td></tr>";

    private static IResult Jobs(JobEngine engine)
    {
        var rows = string.Join("", engine.Store.All().Take(200).Select(r => JobRow(JobsApi.View(engine, r))));
        var body = $$"""
            <h1>Jobs</h1>
            <section class="panel">
              <p class="muted">One queue; one job at a time on this device. Jobs and their history survive a restart; an interrupted training continues from its last saved state.</p>
              <table class="list" id="jobs"><thead><tr><th>Job</th><th>Type</th><th>State</th><th>Progress</th><th>Queued</th><th>Ran for</th><th></th></tr></thead>
              <tbody>{{(rows.Length == 0 ? "<tr><td colspan=\"7\" class=\"muted\">No jobs yet.</td></tr>" : rows)}}</tbody></table>
            </section>
            """;
        return Page("Jobs", "/jobs", body, "jobs.js");
    }

    private static IResult Job(string id, JobEngine engine)
    {
        var r = engine.Store.Get(id) ?? throw new ApiException(404, $"job '{id}' not found");
        var v = JobsApi.View(engine, r);
        var body = $$"""
            <h1>{{H(v.Title)}} <span id="state" class="state {{H(v.State)}}">{{H(v.State)}}</span></h1>
            <section class="panel">
              <p class="muted">{{H(v.Type)}} job {{H(v.Id)}}, queued {{v.Created.ToLocalTime():yyyy-MM-dd HH:mm:ss}}{{(v.Run is { } run ? $" · run <a href=\"/runs/{U(run)}\">{H(run)}</a>" : "")}} · queue {{H(v.Queue)}}{{(v.Worker is { } w ? $" · worker {H(w)}" : "")}} · attempt {{v.Attempts}}</p>
              <div id="progress" class="progress" hidden><div class="bar"></div><span class="label"></span></div>
              <div class="actions"><button id="cancel"{{(JobStates.IsFinal(v.State) ? " hidden" : "")}}>Cancel</button> <a href="/api/jobs/{{U(v.Id)}}/log">plain log</a></div>
              <p id="error" class="error">{{H(v.Error)}}</p>
              <div id="result"></div>
              {{(v.Files is { Count: > 0 } files ? $"<details><summary>{files.Count} file(s) this job made</summary><pre class=\"log\">{H(string.Join("\n", files))}</pre></details>" : "")}}
              <h2>Log</h2>
              <pre id="log" class="log"></pre>
            </section>
            {{Data(new { job = v })}}
            """;
        return Page(v.Title, "/jobs", body, "job.js");
    }
}
