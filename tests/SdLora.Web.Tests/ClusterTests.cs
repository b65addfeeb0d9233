using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using SdLora.IO;
using SdLora.Web.Jobs;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace SdLora.Web.Tests;

/// <summary>
/// The cluster on one machine, with a real PostgreSQL (.ci/pg-cluster.sh starts a throwaway one and exports its URL):
/// one <c>sdlora serve --no-worker</c> and two <c>sdlora worker</c> processes of the built program over the same data
/// root and queue. Several workers on one box stand in for several boxes; the shared folder is a local folder.
/// </summary>
[Collection("web")]
[Trait("Category", "Cluster")]
public class ClusterTests(ITestOutputHelper output)
{
    public const string UrlVariable = "SDLORA_TEST_POSTGRES";
    public const string RestartVariable = "SDLORA_TEST_POSTGRES_RESTART";
    private const string Model = "tiny-sd15 (bundled test model)";
    private static readonly TimeSpan Takeover = TimeSpan.FromSeconds(4);

    [PostgresFact]
    public async Task Jobs_run_exactly_once_on_two_workers_through_a_killed_worker_and_a_database_restart()
    {
        var url = Environment.GetEnvironmentVariable(UrlVariable)!;
        var data = Path.Combine(Path.GetTempPath(), "sdlora-cluster-" + Guid.NewGuid().ToString("N")[..8]);
        var port = FreePort();
        var processes = new List<Process>();
        var logs = new Dictionary<Process, StringWriter>();
        var labels = new Dictionary<Process, string>();
        Process Start(params string[] args)
        {
            var p = StartCli(args, out var log);
            processes.Add(p);
            logs[p] = log;
            labels[p] = $"{args[0]} (pid {p.Id})";
            return p;
        }
        string Logs() => string.Join("\n", logs.Select(kv => $"--- {labels[kv.Key]}\n{kv.Value}"));
        try
        {
            var common = new[] { "--jobs", url, "--data", data, "--takeover-after", $"{Takeover.TotalSeconds}s" };
            Start(["serve", "--port", port.ToString(), "--no-worker", .. common]);
            var workers = new[] { Start(["worker", .. common]), Start(["worker", .. common]) };
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(30) };
            await WebHarness.Until(async () => await Ok(http, "/api/jobs") && workers.All(w => logs[w].ToString().Contains("sdlora worker:")),
                TimeSpan.FromSeconds(90), "the server and both workers to start\n" + Logs());

            // A dataset on the shared root, through the server.
            await Send(http, HttpMethod.Post, "/api/datasets", new { name = "dogs", instance_prompt = "a photo of sks dog", repeats = 1 }, 201);
            using (var photos = ApiTests.Photos(Directory.GetFiles(WebHarness.DogPhotos, "*.jpg").Order().Take(2)))
                Assert.True((await http.PostAsync("/api/datasets/dogs/images", photos)).IsSuccessStatusCode);

            // Two identical trainings (same seed): "a" will lose its worker, "b" runs uninterrupted; then 20 generations.
            var settings = TinyTraining.Settings(36);
            settings["save-every-n-epochs"] = "1"; // 2 photos, batch 1: state every 2 steps
            var queuedAt = DateTimeOffset.UtcNow;
            var train = new Dictionary<string, string>();
            foreach (var run in new[] { "a", "b" })
                train[run] = (await Send(http, HttpMethod.Post, "/api/train", new { run, dataset = "dogs", model = Model, settings }, 202)).GetProperty("id").GetString()!;
            var generate = new List<string>();
            for (int i = 0; i < 20; i++)
                generate.Add((await Send(http, HttpMethod.Post, "/api/generate", new { prompt = $"a dog {i}", steps = 2, width = 64, height = 64, seed = 100 + i, model = Model }, 202))
                    .GetProperty("id").GetString()!);

            // Kill -9 the worker training "a" once it has saved state and gone on.
            JsonElement a = default;
            await WebHarness.Until(async () =>
            {
                a = await Send(http, HttpMethod.Get, $"/api/jobs/{train["a"]}");
                var loss = await Send(http, HttpMethod.Get, "/api/runs/a/loss");
                return a.GetProperty("state").GetString() == "running" && loss.GetArrayLength() >= 5;
            }, TimeSpan.FromMinutes(2), "run a to save state and go on\n" + Logs());
            var victimName = a.GetProperty("worker").GetString()!;
            var victim = workers.Single(w => PidOf(victimName) == w.Id);
            var survivor = workers.Single(w => w != victim);
            var b = await Send(http, HttpMethod.Get, $"/api/jobs/{train["b"]}");
            Assert.NotEqual(victimName, b.GetProperty("worker").GetString());
            int stepsBeforeKill = (await Send(http, HttpMethod.Get, "/api/runs/a/loss")).GetArrayLength();
            victim.Kill(); // SIGKILL: no state saved, no lease released, the job left "processing" in the queue
            await victim.WaitForExitAsync();
            output.WriteLine($"killed worker {victimName} (pid {victim.Id}) at step {stepsBeforeKill} of run a");

            // The database goes away and comes back while the other worker runs jobs.
            await WebHarness.Until(async () => (await Send(http, HttpMethod.Get, "/api/jobs")).EnumerateArray().Count(j => j.GetProperty("state").GetString() == "succeeded") >= 3,
                TimeSpan.FromMinutes(2), "a few jobs to finish before the database restart\n" + Logs());
            int finishedBeforeRestart = (await Send(http, HttpMethod.Get, "/api/jobs")).EnumerateArray().Count(j => JobStates.IsFinal(j.GetProperty("state").GetString()!));
            RestartPostgres();
            var restartedAt = DateTimeOffset.UtcNow;
            output.WriteLine($"PostgreSQL restarted with {finishedBeforeRestart} of 22 jobs finished");

            var all = train.Values.Concat(generate).ToList();
            var done = new Dictionary<string, JsonElement>();
            foreach (var id in all) done[id] = await WaitJob(http, id, TimeSpan.FromMinutes(4), Logs);
            foreach (var (id, job) in done)
                Assert.True(job.GetProperty("state").GetString() == "succeeded", $"{id}: {job}\n{await http.GetStringAsync($"/api/jobs/{id}/log")}\n{Logs()}");

            // The queue went on after the database came back: jobs were still taken and finished afterwards.
            Assert.True(done.Values.Count(j => j.GetProperty("started").GetDateTimeOffset() > restartedAt) >= 3, "jobs started after the PostgreSQL restart");

            // Exactly once: one image per generation, no extra files, one success each, never two runners at once.
            var pngs = Directory.GetFiles(Path.Combine(data, "outputs", "txt2img"), "*.png");
            Assert.Equal(20, pngs.Length);
            foreach (var id in generate)
            {
                var files = done[id].GetProperty("files").EnumerateArray().Select(f => f.GetString()!).ToList();
                Assert.Single(files);
                Assert.True(File.Exists(Path.Combine(data, files[0])), files[0]);
            }
            foreach (var id in all)
            {
                var states = File.ReadAllLines(Path.Combine(data, "jobs", id, "events.jsonl")).Select(l => JsonSerializer.Deserialize<JobEvent>(l, JobJson.Options)!)
                    .Where(e => e.Kind == "state").Select(e => e.Message).ToList();
                Assert.Single(states, s => s == "succeeded");
                Assert.Equal(done[id].GetProperty("attempts").GetInt32(), states.Count(s => s == "running"));
                Assert.Empty(Directory.GetFiles(Path.Combine(data, "jobs", id), FileLease.FileName)); // released
            }

            // Run a: taken over by the surviving worker after the timeout, resumed from state/, same LoRA as run b.
            var aDone = done[train["a"]];
            Assert.Equal(2, aDone.GetProperty("attempts").GetInt32());
            Assert.NotEqual(victimName, aDone.GetProperty("worker").GetString());
            Assert.Equal(PidOf(aDone.GetProperty("worker").GetString()!), survivor.Id);
            var aLog = await http.GetStringAsync($"/api/jobs/{train["a"]}/log");
            Assert.Contains("continuing from the last saved state", aLog);
            Assert.Contains("resuming at step", aLog);
            Assert.Contains("runs/a/a.safetensors", aDone.GetProperty("files").EnumerateArray().Select(f => f.GetString()));
            Assert.Equal(Enumerable.Range(1, 36), (await Send(http, HttpMethod.Get, "/api/runs/a/loss")).EnumerateArray().Select(r => r.GetProperty("step").GetInt32()));
            AssertSameLora(Path.Combine(data, "runs", "a", "a.safetensors"), Path.Combine(data, "runs", "b", "b.safetensors"));

            // Throughput over the whole batch, and queue latency (queued -> started) of the generations and of jobs
            // queued to an idle worker.
            var finished = done.Values.Max(j => j.GetProperty("finished").GetDateTimeOffset());
            double minutes = (finished - queuedAt).TotalMinutes;
            var waits = generate.Select(id => (done[id].GetProperty("started").GetDateTimeOffset() - done[id].GetProperty("created").GetDateTimeOffset()).TotalSeconds).Order().ToList();
            var idle = new List<double>();
            for (int i = 0; i < 5; i++)
            {
                var id = (await Send(http, HttpMethod.Post, "/api/generate", new { prompt = "idle", steps = 1, width = 64, height = 64, seed = i, model = Model }, 202)).GetProperty("id").GetString()!;
                var j = await WaitJob(http, id, TimeSpan.FromMinutes(1), Logs);
                idle.Add((j.GetProperty("started").GetDateTimeOffset() - j.GetProperty("created").GetDateTimeOffset()).TotalSeconds);
            }
            idle.Sort();
            var report = $"cluster: {all.Count} jobs (2 trainings x 36 steps, 20 generations 64 px x 2 steps) in {minutes * 60:F0} s = {all.Count / minutes:F1} jobs/min "
                         + $"with 2 workers (one killed mid-run, PostgreSQL restarted); generation queue latency median {waits[waits.Count / 2]:F1} s, max {waits[^1]:F1} s "
                         + $"(behind the trainings); idle-worker pickup median {idle[idle.Count / 2]:F2} s, max {idle[^1]:F2} s; {Environment.ProcessorCount} cores, 1 torch thread per worker";
            output.WriteLine(report);
            Console.WriteLine(report);
        }
        finally
        {
            foreach (var p in processes)
            {
                try { if (!p.HasExited) { p.Kill(entireProcessTree: true); p.WaitForExit(10_000); } } catch (InvalidOperationException) { }
                p.Dispose();
            }
            output.WriteLine(Logs());
            WebHarness.DeleteData(data);
        }
    }

    [PostgresFact]
    public async Task A_job_for_a_model_goes_to_the_worker_serving_that_models_queue_else_to_the_device_queue()
    {
        var url = Environment.GetEnvironmentVariable(UrlVariable)!;
        var data = Path.Combine(Path.GetTempPath(), "sdlora-routing-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            ServeOptions Shared(ServeOptions o, string queue) => o with { Jobs = url, Queues = [queue], TakeoverAfter = Takeover };
            await using var general = await WebHarness.Start(data, o => Shared(o, "cpu"));
            var generalName = general.App.Services.GetRequiredService<JobEngine>().WorkerName;
            string modelWorkerName;
            await using (var modelWorker = await WebHarness.Start(data, o => Shared(o, JobEngine.ModelQueue("cpu", "tiny-sd15"))))
            {
                modelWorkerName = modelWorker.App.Services.GetRequiredService<JobEngine>().WorkerName;
                await WebHarness.Until(async () => (await general.Get("/api/workers")).EnumerateArray().Any(w => w.GetProperty("name").GetString() == modelWorkerName),
                    TimeSpan.FromSeconds(30), "the model worker to announce itself");
                var id = (await general.Post("/api/generate", new { prompt = "routed", steps = 1, width = 64, height = 64, seed = 1, model = "tiny-sd15" }, 202)).GetProperty("id").GetString()!;
                var job = await general.WaitJob(id, TimeSpan.FromMinutes(1));
                Assert.Equal(("succeeded", "cpu-tiny-sd15", modelWorkerName),
                    (job.GetProperty("state").GetString(), job.GetProperty("queue").GetString(), job.GetProperty("worker").GetString()));
            }
            // Nobody serves the model's queue any more: its jobs go to the device queue.
            var next = (await general.Post("/api/generate", new { prompt = "general", steps = 1, width = 64, height = 64, seed = 2, model = "tiny-sd15" }, 202)).GetProperty("id").GetString()!;
            var done = await general.WaitJob(next, TimeSpan.FromMinutes(1));
            Assert.Equal(("succeeded", "cpu", generalName), (done.GetProperty("state").GetString(), done.GetProperty("queue").GetString(), done.GetProperty("worker").GetString()));
        }
        finally { WebHarness.DeleteData(data); }
    }

    [Fact]
    public void A_postgres_url_becomes_a_connection_string_and_a_bad_one_is_one_line_naming_the_fix()
    {
        var cs = new Npgsql.NpgsqlConnectionStringBuilder(JobStorageFactory.ConnectionString("postgres://me:p%40ss@db.local:6543/jobs?sslmode=require"));
        Assert.Equal(("db.local", 6543, "jobs", "me", "p@ss", Npgsql.SslMode.Require), (cs.Host, cs.Port, cs.Database, cs.Username, cs.Password, cs.SslMode));
        Assert.Equal(5432, new Npgsql.NpgsqlConnectionStringBuilder(JobStorageFactory.ConnectionString("postgresql://me@db/jobs")).Port);
        foreach (var bad in new[] { "mysql://me@db/jobs", "postgres://db/jobs", "postgres://me@db", "not a url", "postgres://me@db/jobs?x=1" })
        {
            var e = Assert.Throws<SdLoraException>(() => JobStorageFactory.ConnectionString(bad));
            Assert.DoesNotContain('\n', e.Message);
            Assert.Contains("--jobs", e.Message);
        }
        Assert.Equal("postgres://me:***@db/jobs", JobStorageFactory.Redact("postgres://me:secret@db/jobs"));
    }

    [Fact]
    public void An_unreachable_postgres_is_one_line_naming_the_server_and_the_fix()
    {
        var options = new ServeOptions { Jobs = $"postgres://sdlora@127.0.0.1:{FreePort()}/sdlora" };
        var e = Assert.Throws<SdLoraException>(() => JobStorageFactory.CheckReachable(options));
        Assert.StartsWith("cannot use PostgreSQL at 127.0.0.1:", e.Message);
        Assert.Contains("fix --jobs postgres://USER@HOST:PORT/DB", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Takeover_durations_read_as_written_and_a_bad_one_names_the_option()
    {
        Assert.Equal(TimeSpan.FromSeconds(30), SdLora.Cli.Commands.ClusterArguments.ParseDuration("30s", "--takeover-after"));
        Assert.Equal(TimeSpan.FromMinutes(2), SdLora.Cli.Commands.ClusterArguments.ParseDuration("2m", "--takeover-after"));
        Assert.Equal(TimeSpan.FromMilliseconds(1500), SdLora.Cli.Commands.ClusterArguments.ParseDuration("1500ms", "--takeover-after"));
        Assert.Equal(TimeSpan.FromHours(1), SdLora.Cli.Commands.ClusterArguments.ParseDuration("1h", "--takeover-after"));
        Assert.Equal(TimeSpan.FromSeconds(45), SdLora.Cli.Commands.ClusterArguments.ParseDuration("45", "--takeover-after"));
        foreach (var bad in new[] { "soon", "-5s", "0", "2 minutes" })
            Assert.StartsWith($"--takeover-after '{bad}' is not a duration", Assert.Throws<SdLoraException>(() => SdLora.Cli.Commands.ClusterArguments.ParseDuration(bad, "--takeover-after")).Message);
        Assert.Throws<SdLoraException>(() => new ServeOptions { TakeoverAfter = TimeSpan.FromSeconds(1) }.Validate());
    }

    [Fact]
    public void A_worker_takes_only_queues_of_its_device_kind()
    {
        Assert.Throws<SdLoraException>(() => new ServeOptions { Device = "cpu", Queues = ["cuda"] }.Validate());
        Assert.Throws<SdLoraException>(() => new ServeOptions { Device = "cpu", Queues = ["CPU"] }.Validate());
        new ServeOptions { Device = "cpu", Queues = ["cpu", "cpu-sd15-base"] }.Validate();
        Assert.Equal("cuda-tiny-sd15-bundled-test-model", JobEngine.ModelQueue("cuda", Model));
    }

    [Fact]
    public void A_lease_is_refused_while_its_holder_is_alive_and_taken_over_once_it_expires()
    {
        var dir = Path.Combine(Path.GetTempPath(), "sdlora-lease-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var first = FileLease.TryAcquire(dir, "w1", "job", TimeSpan.FromMilliseconds(1200));
            Assert.NotNull(first);
            Thread.Sleep(1500); // the heartbeat keeps it alive past its length
            Assert.Null(FileLease.TryAcquire(dir, "w2", "job", TimeSpan.FromSeconds(1)));
            Assert.Equal("w1", FileLease.Holder(dir));
            // Its holder dies (stops beating) and the lease runs out: what is on disk then.
            // (Written under the lease's lock, as any writer of the lease does, so a beat of the first holder cannot interleave;
            // that beat may hold the lock for a moment, so it is waited for.)
            using (FileLease.Lock(dir, TimeSpan.FromSeconds(10)) ?? throw new IOException("the lease's lock stayed taken"))
                File.WriteAllText(Path.Combine(dir, FileLease.FileName), $"{{\"owner\":\"dead\",\"job\":\"job\",\"expires\":\"{DateTimeOffset.UtcNow.AddSeconds(-1):O}\"}}");
            using var second = FileLease.TryAcquire(dir, "w2", "job", TimeSpan.FromSeconds(5));
            Assert.NotNull(second);
            Assert.True(first!.Lost.WaitHandle.WaitOne(TimeSpan.FromSeconds(3)), "the old holder notices at its next beat");
            first.Dispose();
            Assert.Equal("w2", FileLease.Holder(dir)); // the old holder's release leaves the new lease alone
        }
        finally { WebHarness.DeleteData(dir); }
    }

    private static int? PidOf(string workerName) => int.TryParse(workerName.Split('-')[^2], out var pid) ? pid : null;

    private static void AssertSameLora(string a, string b)
    {
        using var fa = SafetensorsFile.Open(a);
        using var fb = SafetensorsFile.Open(b);
        Assert.Equal(fa.Keys.Order(), fb.Keys.Order());
        using var scope = torch.NewDisposeScope();
        foreach (var key in fa.Keys)
        {
            var ta = fa.Load(key, torch.ScalarType.Float32);
            var tb = fb.Load(key, torch.ScalarType.Float32);
            double diff = (ta - tb).abs().max().item<float>();
            Assert.True(diff <= 1e-6, $"{key}: the resumed LoRA differs from the uninterrupted one by {diff}");
        }
    }

    private void RestartPostgres()
    {
        var psi = new ProcessStartInfo("bash", ["-c", Environment.GetEnvironmentVariable(RestartVariable)!]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var text = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, "restarting PostgreSQL failed: " + text);
    }

    private static async Task<JsonElement> WaitJob(HttpClient http, string id, TimeSpan timeout, Func<string> logs)
    {
        var until = DateTime.UtcNow + timeout;
        while (true)
        {
            JsonElement job;
            try { job = await Send(http, HttpMethod.Get, $"/api/jobs/{id}"); }
            catch (HttpRequestException) { await Task.Delay(200); continue; } // the server's database connection is coming back
            if (JobStates.IsFinal(job.GetProperty("state").GetString()!)) return job;
            if (DateTime.UtcNow > until) throw new TimeoutException($"job {id} still {job.GetProperty("state")}: {job}\n{await http.GetStringAsync($"/api/jobs/{id}/log")}\n{logs()}");
            await Task.Delay(200);
        }
    }

    private static async Task<bool> Ok(HttpClient http, string url)
    {
        try { return (await http.GetAsync(url)).IsSuccessStatusCode; }
        catch (HttpRequestException) { return false; }
    }

    private static async Task<JsonElement> Send(HttpClient http, HttpMethod method, string url, object? body = null, int expect = 200)
    {
        using var request = new HttpRequestMessage(method, url);
        if (body is not null) request.Content = JsonContent.Create(body, options: JobJson.Options);
        using var response = await http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        if ((int)response.StatusCode != expect) throw new HttpRequestException($"{method} {url}: expected {expect}, got {(int)response.StatusCode}: {text}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>The built program (<c>dotnet sdlora-cli.dll ARGS</c>) as its own process, one torch thread (two share this machine's cores).</summary>
    private static Process StartCli(string[] args, out StringWriter log)
    {
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "sdlora-cli.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        var p = Process.Start(psi)!;
        var sink = new StringWriter();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (sink) sink.WriteLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (sink) sink.WriteLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        log = sink;
        return p;
    }
}

/// <summary>A test that needs a real PostgreSQL: reported as skipped, with the reason, where .ci/run did not start one.</summary>
public sealed class PostgresFactAttribute : FactAttribute
{
    public PostgresFactAttribute()
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable(ClusterTests.UrlVariable)) || string.IsNullOrEmpty(Environment.GetEnvironmentVariable(ClusterTests.RestartVariable)))
            Skip = $"needs a throwaway PostgreSQL: {ClusterTests.UrlVariable}=postgres://USER@HOST:PORT/DB and {ClusterTests.RestartVariable}=a command that restarts it "
                   + "(.ci/run starts one with .ci/pg-cluster.sh and sets both)";
    }
}
