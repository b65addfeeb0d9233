using System.IO.Compression;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using SdLora.Imaging;
using Xunit;

namespace SdLora.Web.Tests;

/// <summary>One in-process server shared by the API tests of this class (each test uses its own names).</summary>
public sealed class SharedServer : IAsyncLifetime
{
    public WebHarness Web { get; private set; } = null!;
    public async Task InitializeAsync() => Web = await WebHarness.Start(tweak: o => o with { Uploads = o.Uploads with { MaxFileBytes = 200 << 10 } });
    public async Task DisposeAsync() => await Web.DisposeAsync();
}

[Collection("web")]
public class ApiTests(SharedServer server) : IClassFixture<SharedServer>
{
    private WebHarness Web => server.Web;

    internal static MultipartFormDataContent Photos(IEnumerable<string> paths)
    {
        var form = new MultipartFormDataContent();
        foreach (var p in paths)
        {
            var content = new ByteArrayContent(File.ReadAllBytes(p));
            content.Headers.ContentType = new MediaTypeHeaderValue("image/jpeg");
            form.Add(content, "files", Path.GetFileName(p));
        }
        return form;
    }

    private async Task<string> NewDataset(string name, int photos = 5)
    {
        await Web.Post("/api/datasets", new { name, instance_prompt = "a photo of sks dog", repeats = 1 }, 201);
        var r = await Web.Client.PostAsync($"/api/datasets/{name}/images", Photos(Directory.GetFiles(WebHarness.DogPhotos, "*.jpg").Order().Take(photos)));
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        return name;
    }

    private static async Task<string> ErrorOf(HttpResponseMessage r)
    {
        var text = await r.Content.ReadAsStringAsync();
        var error = JsonDocument.Parse(text).RootElement.GetProperty("error").GetString()!;
        Assert.DoesNotContain('\n', error);
        return error;
    }

    [Theory]
    [InlineData("/generate", "Generate")]
    [InlineData("/datasets", "Datasets")]
    [InlineData("/train", "Train a LoRA")]
    [InlineData("/models", "tiny-sd15")]
    [InlineData("/jobs", "Jobs")]
    [InlineData("/static/lib/uPlot.iife.min.js", "uPlot")]
    public async Task Pages_render_on_the_server(string url, string contains)
    {
        var r = await Web.Client.GetAsync(url);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Contains(contains, await r.Content.ReadAsStringAsync());
        var job = await Web.Post("/api/generate", new { prompt = "page <b>", steps = 1, width = 64, height = 64 }, 202);
        var page = await Web.Client.GetStringAsync($"/jobs/{job.GetProperty("id").GetString()}");
        Assert.Contains("page &lt;b&gt;", page); // request text is encoded, never markup
        await Web.WaitJob(job.GetProperty("id").GetString()!);
    }

    [Fact]
    public async Task Models_list_the_checkpoint_with_what_model_inspect_says()
    {
        var models = await Web.Get("/api/models");
        var tiny = models.EnumerateArray().Single(m => m.GetProperty("name").GetString() == "tiny-sd15");
        Assert.True(tiny.GetProperty("usable").GetBoolean());
        Assert.Equal("StableDiffusion1", tiny.GetProperty("family").GetString());
        Assert.True(tiny.GetProperty("parameters").GetInt64() > 1_000_000);
        var report = await Web.Get("/api/models/tiny-sd15");
        Assert.Equal("diffusers folder", report.GetProperty("layout").GetString());
        await Web.Get("/api/models/nope", 404);
        var blip = await Web.Get("/api/blip");
        Assert.True(blip.GetProperty("available").GetBoolean());
    }

    [Fact]
    public async Task Generate_job_writes_pngs_with_parameters_that_the_gallery_lists()
    {
        var job = await Web.Post("/api/generate", new { prompt = "a red dog", steps = 2, width = 64, height = 64, seed = 5, batch_size = 2, sampler_name = "Euler" }, 202);
        var done = await Web.WaitJob(job.GetProperty("id").GetString()!);
        Assert.Equal("succeeded", done.GetProperty("state").GetString());
        var images = done.GetProperty("result").GetProperty("images").EnumerateArray().ToList();
        Assert.Equal([5L, 6L], images.Select(i => i.GetProperty("seed").GetInt64()));
        var file = images[0].GetProperty("file").GetString()!;
        var png = await Web.Client.GetByteArrayAsync($"/files/outputs/{file}");
        Assert.Equal(0x89, png[0]);
        var output = await Web.Get($"/api/outputs/{file}");
        Assert.Contains("Steps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64", output.GetProperty("infotext").GetString());
        Assert.Equal("a red dog", output.GetProperty("parameters").GetProperty("prompt").GetString());
        var gallery = await Web.Get("/api/outputs");
        Assert.Contains(gallery.EnumerateArray(), o => o.GetProperty("file").GetString() == file);
        var events = await Web.Client.GetStringAsync($"/api/jobs/{job.GetProperty("id").GetString()}/events");
        Assert.Contains("event: progress", events);
        Assert.Contains("\"phase\":\"sampling\"", events);
        Assert.Contains("event: end", events);
    }

    [Fact]
    public async Task Merge_job_writes_a_new_checkpoint_that_lists_and_generates_and_refuses_bad_requests()
    {
        var loraDir = Path.Combine(Web.DataDir, "models", "lora");
        Directory.CreateDirectory(loraDir);
        File.Copy(Path.Combine(WebHarness.RepoRoot, "tests", "SdLora.Tests", "data", "golden", "lora_kohya_tiny.safetensors"), Path.Combine(loraDir, "tinylora.safetensors"), true);

        await Web.Post("/api/merge", new { name = "../evil", loras = new[] { new { name = "tinylora", weight = 0.5 } }, model = "tiny-sd15" }, 400);
        await Web.Post("/api/merge", new { name = "merged", loras = new[] { new { name = "nope", weight = 0.5 } }, model = "tiny-sd15" }, 404);
        await Web.Post("/api/merge", new { name = "merged", loras = Array.Empty<object>(), model = "tiny-sd15" }, 400);

        var job = await Web.Post("/api/merge", new { name = "tiny-merged", loras = new[] { new { name = "tinylora", weight = 0.5 } }, model = "tiny-sd15", fp16 = false }, 202);
        var done = await Web.WaitJob(job.GetProperty("id").GetString()!);
        Assert.Equal("succeeded", done.GetProperty("state").GetString());
        var result = done.GetProperty("result");
        Assert.Equal("tiny-merged", result.GetProperty("checkpoint").GetString());
        Assert.True(result.GetProperty("layers_changed").GetInt32() > 0);
        Assert.Empty(result.GetProperty("unmatched").EnumerateArray());
        Assert.True(File.Exists(Path.Combine(Web.DataDir, "models", "checkpoints", "tiny-merged", "unet", "diffusion_pytorch_model.safetensors")));

        var models = await Web.Get("/api/models");
        Assert.Contains(models.EnumerateArray(), m => m.GetProperty("name").GetString() == "tiny-merged" && m.GetProperty("usable").GetBoolean());
        // A second merge under the same name would replace the user's checkpoint: refused.
        await Web.Post("/api/merge", new { name = "tiny-merged", loras = new[] { new { name = "tinylora", weight = 1.0 } }, model = "tiny-sd15" }, 409);

        var gen = await Web.Post("/api/generate", new { prompt = "a dog", steps = 1, width = 64, height = 64, seed = 1, model = "tiny-merged" }, 202);
        Assert.Equal("succeeded", (await Web.WaitJob(gen.GetProperty("id").GetString()!)).GetProperty("state").GetString());
    }

    [Fact]
    public async Task A1111_txt2img_answers_with_base64_pngs_parameters_and_info()
    {
        var r = await Web.Post("/sdapi/v1/txt2img", new
        {
            prompt = "a dog", negative_prompt = "blurry", seed = 11, sampler_name = "DDIM", steps = 2, cfg_scale = 5, width = 64, height = 64,
            batch_size = 1, n_iter = 2, override_settings = new Dictionary<string, object> { ["sd_model_checkpoint"] = "tiny-sd15", ["CLIP_stop_at_last_layers"] = 2 },
            enable_hr = false, restore_faces = false, send_images = true,
        });
        var images = r.GetProperty("images").EnumerateArray().Select(i => Convert.FromBase64String(i.GetString()!)).ToList();
        Assert.Equal(2, images.Count);
        using var tmp = new MemoryStream(images[1]);
        var path = Path.GetTempFileName();
        File.WriteAllBytes(path, images[1]);
        try { Assert.Equal((64, 64), (RgbImage.Load(path).Width, RgbImage.Load(path).Height)); }
        finally { File.Delete(path); }
        Assert.Equal("a dog", r.GetProperty("parameters").GetProperty("prompt").GetString());
        var info = JsonDocument.Parse(r.GetProperty("info").GetString()!).RootElement;
        Assert.Equal([11L, 12L], info.GetProperty("all_seeds").EnumerateArray().Select(s => s.GetInt64()));
        Assert.Equal(11, info.GetProperty("seed").GetInt64());
        Assert.Equal("DDIM", info.GetProperty("sampler_name").GetString());
        Assert.Equal(2, info.GetProperty("clip_skip").GetInt32());
        Assert.Contains("Clip skip: 2", info.GetProperty("infotexts")[0].GetString());
        Assert.Equal("tiny-sd15", info.GetProperty("sd_model_name").GetString());
    }

    [Fact]
    public async Task A1111_listing_endpoints_and_options_answer_in_their_shapes()
    {
        var samplers = await Web.Get("/sdapi/v1/samplers");
        Assert.Contains(samplers.EnumerateArray(), s => s.GetProperty("name").GetString() == "DPM++ 2M Karras");
        var models = await Web.Get("/sdapi/v1/sd-models");
        Assert.Contains(models.EnumerateArray(), m => m.GetProperty("title").GetString() == "tiny-sd15" && m.GetProperty("model_name").GetString() == "tiny-sd15");
        Assert.Equal(JsonValueKind.Array, (await Web.Get("/sdapi/v1/loras")).ValueKind);
        await Web.Post("/sdapi/v1/options", new Dictionary<string, string> { ["sd_model_checkpoint"] = "tiny-sd15" });
        Assert.Equal("tiny-sd15", (await Web.Get("/sdapi/v1/options")).GetProperty("sd_model_checkpoint").GetString());
        await Web.Post("/sdapi/v1/options", new Dictionary<string, string> { ["sd_model_checkpoint"] = "missing" }, 404);
        var progress = await Web.Get("/sdapi/v1/progress");
        Assert.True(progress.TryGetProperty("progress", out _));
        Assert.True(progress.GetProperty("state").TryGetProperty("sampling_steps", out _));
        await Web.Post("/sdapi/v1/interrupt");
    }

    [Theory]
    [InlineData("/sdapi/v1/txt2img", """{"prompt":"x","sampler_name":"Warp Drive","width":64,"height":64}""", 400, "Warp Drive")]
    [InlineData("/sdapi/v1/txt2img", """{"prompt":"x", "steps": """, 400, "JSON")]
    [InlineData("/api/generate", """{"prompt":"x","steps":"many"}""", 400, "")]
    [InlineData("/api/generate", """{"prompt":"x","width":100,"height":64}""", 400, "multiples of 8")]
    [InlineData("/api/generate", """{"prompt":"x <lora:../../secret:1>","width":64,"height":64}""", 400, "not a path")]
    [InlineData("/api/generate", """{"prompt":"x <lora:nothere:1>","width":64,"height":64}""", 400, "nothere")]
    [InlineData("/api/generate", """{"prompt":"x","model":"../../etc/passwd"}""", 404, "not found")]
    [InlineData("/api/datasets", """{"name":"../escape"}""", 400, "not usable")]
    [InlineData("/api/train", """{"run":"r1","dataset":"../x"}""", 400, "not a name inside")]
    public async Task Bad_requests_get_a_4xx_with_a_one_line_json_reason(string url, string body, int status, string mentions)
    {
        var r = await Web.Client.PostAsync(url, new StringContent(body, Encoding.UTF8, "application/json"));
        Assert.Equal(status, (int)r.StatusCode);
        Assert.Contains(mentions, await ErrorOf(r));
    }

    [Theory]
    [InlineData("/api/datasets/..%2F..%2Fetc")]
    [InlineData("/api/datasets/x/images/..%2F..%2F..%2Fjobs.db")]
    [InlineData("/files/outputs/..%2Fjobs.db")]
    [InlineData("/files/runs/..%2F..%2F/jobs.db")]
    [InlineData("/api/jobs/..%2F..%2Fjobs.db")]
    [InlineData("/api/loras/..%2Fsecret")]
    [InlineData("/api/nothing/here")]
    public async Task Names_that_climb_out_of_the_data_folders_are_refused(string url)
    {
        var r = await Web.Client.GetAsync(url);
        Assert.InRange((int)r.StatusCode, 400, 404);
        await ErrorOf(r);
    }

    [Fact]
    public async Task Dataset_upload_captions_thumbnails_and_limits()
    {
        var name = await NewDataset("api-dogs", photos: 3);
        var detail = await Web.Get($"/api/datasets/{name}");
        var images = detail.GetProperty("images").EnumerateArray().ToList();
        Assert.Equal(["00.jpg", "01.jpg", "02.jpg"], images.Select(i => i.GetProperty("file").GetString()));
        Assert.Contains("1_a photo of sks dog", detail.GetProperty("layout").GetString());

        var put = await Web.Client.PutAsync($"/api/datasets/{name}/captions/01.jpg", new StringContent("""{"caption":"sks dog on grass"}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.NoContent, put.StatusCode);
        Assert.Equal("sks dog on grass\n", File.ReadAllText(Path.Combine(Web.DataDir, "datasets", name, "01.txt")));

        var thumb = await Web.Client.GetAsync($"/api/datasets/{name}/thumbs/00.jpg");
        Assert.Equal("image/jpeg", thumb.Content.Headers.ContentType!.MediaType);

        // Over the per-file limit (200 KiB here): refused whole.
        var big = new MultipartFormDataContent { { new ByteArrayContent(new byte[300 << 10]), "files", "big.jpg" } };
        var r = await Web.Client.PostAsync($"/api/datasets/{name}/images", big);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, r.StatusCode);
        Assert.Contains("per-file limit", await ErrorOf(r));

        // Not an image: listed as skipped, nothing written.
        var junk = new MultipartFormDataContent { { new ByteArrayContent(Encoding.UTF8.GetBytes("not a picture")), "files", "fake.png" } };
        var skipped = JsonDocument.Parse(await (await Web.Client.PostAsync($"/api/datasets/{name}/images", junk)).Content.ReadAsStringAsync()).RootElement;
        Assert.Contains("not a readable image", skipped.GetProperty("skipped")[0].GetString());
        Assert.False(File.Exists(Path.Combine(Web.DataDir, "datasets", name, "fake.png")));

        // A zip is unpacked with the training rules: photos and captions in, a climbing entry refuses the zip.
        var zipBytes = Zip(("10_sks dog/a.jpg", File.ReadAllBytes(Path.Combine(WebHarness.DogPhotos, "03.jpg"))), ("10_sks dog/a.txt", "sks dog, close up"u8.ToArray()));
        var ok = await Web.Client.PostAsync($"/api/datasets/{name}/images", new MultipartFormDataContent { { new ByteArrayContent(zipBytes), "files", "more.zip" } });
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        Assert.Equal("sks dog, close up", File.ReadAllText(Path.Combine(Web.DataDir, "datasets", name, "10_sks dog", "a.txt")));
        var evil = Zip(("../../evil.jpg", File.ReadAllBytes(Path.Combine(WebHarness.DogPhotos, "03.jpg"))));
        var refused = await Web.Client.PostAsync($"/api/datasets/{name}/images", new MultipartFormDataContent { { new ByteArrayContent(evil), "files", "evil.zip" } });
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains("'..'", await ErrorOf(refused));
        Assert.False(File.Exists(Path.Combine(Web.DataDir, "evil.jpg")));

        var del = await Web.Client.DeleteAsync($"/api/datasets/{name}/images/01.jpg");
        Assert.Equal(HttpStatusCode.NoContent, del.StatusCode);
        Assert.False(File.Exists(Path.Combine(Web.DataDir, "datasets", name, "01.txt")));
    }

    private static byte[] Zip(params (string Name, byte[] Data)[] entries)
    {
        using var ms = new MemoryStream();
        using (var zip = new ZipArchive(ms, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var (n, d) in entries)
                using (var s = zip.CreateEntry(n).Open()) s.Write(d);
        return ms.ToArray();
    }

    [Fact]
    public async Task Caption_job_writes_blip_captions_as_txt_files()
    {
        var name = await NewDataset("api-caption", photos: 2);
        var job = await Web.Post($"/api/datasets/{name}/caption", new { dataset = name, prefix = "sks dog, " }, 202);
        var done = await Web.WaitJob(job.GetProperty("id").GetString()!);
        Assert.True(done.GetProperty("state").GetString() == "succeeded", done.ToString());
        Assert.Equal(2, done.GetProperty("result").GetProperty("captioned").GetInt32());
        var caption = File.ReadAllText(Path.Combine(Web.DataDir, "datasets", name, "00.txt"));
        Assert.StartsWith("sks dog, ", caption);
        Assert.Contains(caption.Trim(), (await Web.Get($"/api/datasets/{name}")).GetProperty("images")[0].GetProperty("caption").GetString());
    }

    [Fact]
    public async Task Cross_site_state_changes_are_refused_and_same_origin_ones_pass()
    {
        using var evil = new HttpRequestMessage(HttpMethod.Post, "/api/datasets") { Content = new StringContent("""{"name":"csrf"}""", Encoding.UTF8, "application/json") };
        evil.Headers.Add("Origin", "https://evil.example");
        var r = await Web.Client.SendAsync(evil);
        Assert.Equal(HttpStatusCode.Forbidden, r.StatusCode);
        Assert.Contains("cross-site", await ErrorOf(r));
        Assert.False(Directory.Exists(Path.Combine(Web.DataDir, "datasets", "csrf")));

        using var site = new HttpRequestMessage(HttpMethod.Post, "/api/datasets") { Content = new StringContent("""{"name":"csrf"}""", Encoding.UTF8, "application/json") };
        site.Headers.Add("Sec-Fetch-Site", "cross-site");
        Assert.Equal(HttpStatusCode.Forbidden, (await Web.Client.SendAsync(site)).StatusCode);

        using var own = new HttpRequestMessage(HttpMethod.Post, "/api/datasets") { Content = new StringContent("""{"name":"same-origin"}""", Encoding.UTF8, "application/json") };
        own.Headers.Add("Origin", Web.BaseUrl);
        Assert.Equal(HttpStatusCode.Created, (await Web.Client.SendAsync(own)).StatusCode);
    }

    [Fact]
    public async Task Queued_jobs_wait_their_turn_and_cancel_stops_queued_and_running_jobs()
    {
        var long1 = (await Web.Post("/api/generate", new { prompt = "slow", steps = 400, width = 64, height = 64, seed = 1 }, 202)).GetProperty("id").GetString()!;
        var queued = (await Web.Post("/api/generate", new { prompt = "never", steps = 2, width = 64, height = 64, seed = 2 }, 202)).GetProperty("id").GetString()!;
        await WebHarness.Until(async () => (await Web.Get($"/api/jobs/{long1}")).GetProperty("state").GetString() == "running", TimeSpan.FromSeconds(60), "the first job to run");
        Assert.Equal("queued", (await Web.Get($"/api/jobs/{queued}")).GetProperty("state").GetString());

        var c = await Web.Post($"/api/jobs/{queued}/cancel");
        Assert.Equal("cancelled", c.GetProperty("state").GetString());
        await WebHarness.Until(async () => (await Web.Get($"/api/jobs/{long1}")).TryGetProperty("progress", out var p) && p.GetProperty("phase").GetString() == "sampling",
            TimeSpan.FromSeconds(60), "sampling to start");
        await Web.Post($"/api/jobs/{long1}/cancel");
        var first = await Web.WaitJob(long1, TimeSpan.FromSeconds(30));
        Assert.Equal("cancelled", first.GetProperty("state").GetString());
        Assert.Equal("cancelled", (await Web.Get($"/api/jobs/{queued}")).GetProperty("state").GetString());
        Assert.Equal(0, (await Web.Get($"/api/jobs/{queued}")).GetProperty("attempts").GetInt32());
        await Web.Post($"/api/jobs/{long1}/cancel", expect: 409);

        // The queue goes on after cancellations.
        var next = await Web.Post("/api/generate", new { prompt = "after", steps = 1, width = 64, height = 64 }, 202);
        Assert.Equal("succeeded", (await Web.WaitJob(next.GetProperty("id").GetString()!)).GetProperty("state").GetString());
    }

    [Fact]
    public async Task A_job_that_throws_fails_with_its_message_and_the_server_goes_on()
    {
        var broken = Path.Combine(Web.DataDir, "models", "checkpoints", "broken.safetensors");
        File.WriteAllBytes(broken, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        var job = await Web.Post("/api/generate", new { prompt = "x", steps = 1, width = 64, height = 64, model = "broken.safetensors" }, 202);
        var done = await Web.WaitJob(job.GetProperty("id").GetString()!);
        Assert.Equal("failed", done.GetProperty("state").GetString());
        Assert.Contains("broken.safetensors", done.GetProperty("error").GetString());
        var log = await Web.Client.GetStringAsync($"/api/jobs/{job.GetProperty("id").GetString()}/log");
        Assert.Contains("error: ", log);
        var after = await Web.Post("/api/generate", new { prompt = "x", steps = 1, width = 64, height = 64, model = "tiny-sd15" }, 202);
        Assert.Equal("succeeded", (await Web.WaitJob(after.GetProperty("id").GetString()!)).GetProperty("state").GetString());
        File.Delete(broken);
    }

    [Fact]
    public async Task Training_makes_a_lora_that_generation_uses_by_name()
    {
        var dataset = await NewDataset("api-train", photos: 3);
        var bad = await Web.Client.PostAsync("/api/train", JsonContent(new { run = "api-run", dataset, model = "tiny-sd15", settings = new Dictionary<string, string> { ["network-dim"] = "-3" } }));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("network-dim", await ErrorOf(bad));
        var forged = await Web.Client.PostAsync("/api/train", JsonContent(new { run = "api-run", dataset, model = "tiny-sd15", settings = new Dictionary<string, string> { ["output"] = "/tmp/x" } }));
        Assert.Contains("set by the server", await ErrorOf(forged));

        var job = await Web.Post("/api/train", new { run = "api-run", dataset, model = "tiny-sd15", settings = TinyTraining.Settings(4), sample_prompts = TinyTraining.SamplePrompt }, 202);
        var done = await Web.WaitJob(job.GetProperty("id").GetString()!);
        Assert.Equal("succeeded", done.GetProperty("state").GetString());
        Assert.Equal(4, done.GetProperty("result").GetProperty("steps").GetInt32());
        var run = await Web.Get("/api/runs/api-run");
        Assert.Contains("api-run.safetensors", run.GetProperty("loras").EnumerateArray().Select(l => l.GetString()));
        Assert.NotEmpty(run.GetProperty("samples").EnumerateArray());
        var loss = await Web.Get("/api/runs/api-run/loss?after=2");
        Assert.Equal([3, 4], loss.EnumerateArray().Select(r => r.GetProperty("step").GetInt32()));
        Assert.Contains((await Web.Get("/api/loras")).EnumerateArray(), l => l.GetProperty("name").GetString() == "api-run");
        await Web.Post("/api/train", new { run = "api-run", dataset, model = "tiny-sd15", settings = TinyTraining.Settings(4) }, 409);

        var gen = await Web.Post("/sdapi/v1/txt2img", new { prompt = "a photo of sks dog <lora:api-run:0.8>", steps = 2, width = 64, height = 64, seed = 3 });
        var infotext = JsonDocument.Parse(gen.GetProperty("info").GetString()!).RootElement.GetProperty("infotexts")[0].GetString();
        Assert.Contains("Lora hashes: \"api-run:", infotext);
    }

    private static StringContent JsonContent(object o) => new(JsonSerializer.Serialize(o), Encoding.UTF8, "application/json");
}
