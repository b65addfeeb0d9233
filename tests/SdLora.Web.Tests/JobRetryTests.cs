using Microsoft.Extensions.DependencyInjection;
using SdLora.Web.Jobs;
using Xunit;

namespace SdLora.Web.Tests;

/// <summary>Bounded retries: an unexpected error is retried a few times, then the job fails with that error shown; a bad setting fails at once.</summary>
[Collection("web")]
public class JobRetryTests
{
    private sealed class FlakyJob : IJobHandler
    {
        public int Runs;
        public string Type => "flaky";
        public object? Run(JobContext context)
        {
            Interlocked.Increment(ref Runs);
            if (context.Args<string>() == "setting") throw new SdLoraException("--steps 0 must be at least 1");
            throw new IOException($"the shared folder went away (run {Runs})");
        }
    }

    [Fact]
    public async Task An_unexpected_error_is_retried_up_to_the_limit_then_fails_with_the_last_error_on_the_api_and_the_page()
    {
        var flaky = new FlakyJob();
        await using var web = await WebHarness.Start(tweak: o => o with { MaxAttempts = 3, RetryDelay = TimeSpan.FromMilliseconds(100) },
            configure: b => b.Services.AddSingleton<IJobHandler>(flaky));
        var engine = web.App.Services.GetRequiredService<JobEngine>();
        var id = engine.Enqueue("flaky", "flaky job", "io").Id;
        var job = await web.WaitJob(id, TimeSpan.FromMinutes(1));
        var log = await web.Client.GetStringAsync($"/api/jobs/{id}/log");
        Assert.True(job.GetProperty("state").GetString() == "failed" && job.GetProperty("attempts").GetInt32() == 3 && flaky.Runs == 3, $"{job}\n{log}");
        Assert.Equal("gave up after 3 attempts: IOException: the shared folder went away (run 3)", job.GetProperty("error").GetString());
        Assert.Contains("attempt 1 of 3 failed: IOException: the shared folder went away (run 1); it is retried", log);
        Assert.Contains("gave up after 3 attempts", await web.Client.GetStringAsync($"/jobs/{id}"));

        var bad = engine.Enqueue("flaky", "bad setting", "setting").Id;
        job = await web.WaitJob(bad, TimeSpan.FromMinutes(1));
        Assert.Equal(("failed", 1, "--steps 0 must be at least 1"), (job.GetProperty("state").GetString(), job.GetProperty("attempts").GetInt32(), job.GetProperty("error").GetString()));
        Assert.Equal(4, flaky.Runs);
    }
}
