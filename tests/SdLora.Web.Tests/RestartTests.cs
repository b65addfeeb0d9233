using System.Text.Json;
using Xunit;

namespace SdLora.Web.Tests;

[Collection("web")]
public class RestartTests
{
    [Fact]
    public async Task A_training_job_cut_off_by_a_server_stop_resumes_when_the_server_comes_back()
    {
        var data = Path.Combine(Path.GetTempPath(), "sdlora-restart-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            string jobId;
            const int steps = 12;
            await using (var first = await WebHarness.Start(data))
            {
                await first.Post("/api/datasets", new { name = "dogs", instance_prompt = "a photo of sks dog", repeats = 1 }, 201);
                await first.Client.PostAsync("/api/datasets/dogs/images", ApiTests.Photos(Directory.GetFiles(WebHarness.DogPhotos, "*.jpg").Order().Take(3)));
                var job = await first.Post("/api/train", new { run = "restart", dataset = "dogs", model = "tiny-sd15", settings = TinyTraining.Settings(steps) }, 202);
                jobId = job.GetProperty("id").GetString()!;
                await WebHarness.Until(async () =>
                {
                    var r = await first.Client.GetAsync("/api/runs/restart/loss");
                    return r.IsSuccessStatusCode && JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetArrayLength() >= 3;
                }, TimeSpan.FromMinutes(2), "three training steps");
            } // the server stops mid-run: the session saves its state, the job goes back to the queue

            var record = JsonDocument.Parse(File.ReadAllText(Path.Combine(data, "jobs", jobId, "job.json"))).RootElement;
            Assert.Equal("queued", record.GetProperty("state").GetString());
            Assert.True(Directory.Exists(Path.Combine(data, "runs", "restart", "state")), "state saved at the stop");
            int savedSteps = File.ReadAllLines(Path.Combine(data, "runs", "restart", "loss.csv")).Length - 1;
            Assert.InRange(savedSteps, 3, steps - 1);

            await using (var second = await WebHarness.Start(data))
            {
                var done = await second.WaitJob(jobId, TimeSpan.FromMinutes(4));
                Assert.True(done.GetProperty("state").GetString() == "succeeded", done.ToString());
                Assert.Equal(2, done.GetProperty("attempts").GetInt32());
                Assert.Equal(steps, done.GetProperty("result").GetProperty("steps").GetInt32());
                var loss = await second.Get("/api/runs/restart/loss");
                Assert.Equal(Enumerable.Range(1, steps), loss.EnumerateArray().Select(r => r.GetProperty("step").GetInt32()));
                var log = await second.Client.GetStringAsync($"/api/jobs/{jobId}/log");
                Assert.Contains("server stopping", log);
                Assert.Contains("continuing from the last saved state", log);
                Assert.Contains($"resuming at step {savedSteps}", log);
            }
        }
        finally { WebHarness.DeleteData(data); }
    }

    [Fact]
    public async Task Cancel_saves_the_training_state_and_resume_finishes_the_run()
    {
        await using var web = await WebHarness.Start();
        await web.Post("/api/datasets", new { name = "dogs", instance_prompt = "a photo of sks dog", repeats = 1 }, 201);
        await web.Client.PostAsync("/api/datasets/dogs/images", ApiTests.Photos(Directory.GetFiles(WebHarness.DogPhotos, "*.jpg").Order().Take(2)));
        // Long enough that the cancel, sent once two steps are logged, always lands while the job runs (with 10 steps a
        // tiny run could finish between the poll and the cancel); the resume then runs the rest.
        const int steps = 60;
        var id = (await web.Post("/api/train", new { run = "stop-go", dataset = "dogs", model = "tiny-sd15", settings = TinyTraining.Settings(steps) }, 202)).GetProperty("id").GetString()!;
        await WebHarness.Until(async () => (await web.Get("/api/runs/stop-go/loss")).GetArrayLength() >= 2, TimeSpan.FromMinutes(2), "two training steps");
        await web.Post($"/api/jobs/{id}/cancel");
        var cancelled = await web.WaitJob(id);
        Assert.Equal("cancelled", cancelled.GetProperty("state").GetString());
        Assert.True(cancelled.TryGetProperty("result", out _), await web.Client.GetStringAsync($"/api/jobs/{id}/log"));
        Assert.True(cancelled.GetProperty("result").GetProperty("cancelled").GetBoolean());
        int stoppedAt = cancelled.GetProperty("result").GetProperty("steps").GetInt32();
        Assert.InRange(stoppedAt, 2, steps - 1);
        Assert.True((await web.Get("/api/runs/stop-go")).GetProperty("has_state").GetBoolean());

        var resumed = await web.Post("/api/runs/stop-go/resume", expect: 202);
        var done = await web.WaitJob(resumed.GetProperty("id").GetString()!);
        Assert.True(done.GetProperty("state").GetString() == "succeeded", done.ToString());
        Assert.Equal(steps, done.GetProperty("result").GetProperty("steps").GetInt32());
        Assert.Equal(Enumerable.Range(1, steps), (await web.Get("/api/runs/stop-go/loss")).EnumerateArray().Select(r => r.GetProperty("step").GetInt32()));
        Assert.Contains($"resuming at step {stoppedAt}", await web.Client.GetStringAsync($"/api/jobs/{resumed.GetProperty("id").GetString()}/log"));
        var openapi = await web.Get("/openapi/v1.json");
        Assert.True(openapi.GetProperty("paths").TryGetProperty("/api/runs/{name}/resume", out _));
    }

    [Fact]
    public async Task The_job_history_survives_a_restart()
    {
        var data = Path.Combine(Path.GetTempPath(), "sdlora-history-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            string id;
            await using (var first = await WebHarness.Start(data))
            {
                id = (await first.Post("/api/generate", new { prompt = "kept", steps = 1, width = 64, height = 64 }, 202)).GetProperty("id").GetString()!;
                await first.WaitJob(id);
            }
            await using var second = await WebHarness.Start(data);
            var jobs = await second.Get("/api/jobs");
            var job = jobs.EnumerateArray().Single(j => j.GetProperty("id").GetString() == id);
            Assert.Equal("succeeded", job.GetProperty("state").GetString());
            Assert.Contains("saved 0000", await second.Client.GetStringAsync($"/api/jobs/{id}/log"));
        }
        finally { WebHarness.DeleteData(data); }
    }

    [Fact]
    public void Binding_beyond_loopback_without_a_password_is_refused()
    {
        var e = Assert.Throws<SdLoraException>(() => new ServeOptions { Listen = "0.0.0.0" }.Validate());
        Assert.Contains("--auth", e.Message);
        new ServeOptions { Listen = "0.0.0.0", Token = "a-long-token" }.Validate();
        new ServeOptions { Listen = "::1" }.Validate();
        Assert.Throws<SdLoraException>(() => new ServeOptions { Auth = "nopass" }.Validate());
    }

    [Fact]
    public async Task A_token_server_answers_only_requests_that_carry_the_token()
    {
        await using var web = await WebHarness.Start(tweak: o => o with { Token = "secret-token-123" });
        Assert.Equal(401, (int)(await web.Client.GetAsync("/api/jobs")).StatusCode);
        using var request = new HttpRequestMessage(HttpMethod.Get, "/api/jobs");
        request.Headers.Authorization = new("Bearer", "secret-token-123");
        Assert.Equal(200, (int)(await web.Client.SendAsync(request)).StatusCode);
        var page = await web.Client.GetAsync("/generate?token=secret-token-123");
        Assert.Equal(200, (int)page.StatusCode);
        Assert.Contains(page.Headers.GetValues("Set-Cookie"), c => c.StartsWith("sdlora_token="));
    }
}
