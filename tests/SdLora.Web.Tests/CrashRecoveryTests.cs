using System.Text.Json;
using Hangfire;
using Hangfire.Common;
using Hangfire.States;
using Hangfire.Storage.SQLite;
using SdLora.Web.Jobs;
using Xunit;

namespace SdLora.Web.Tests;

[Collection("web")]
public class CrashRecoveryTests
{
    [Fact]
    public async Task A_job_left_running_by_a_crashed_server_runs_again_at_the_next_start()
    {
        var data = Path.Combine(Path.GetTempPath(), "sdlora-crash-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            await using (await WebHarness.Start(data)) { } // a data folder with its job database

            // What a server killed mid-job leaves behind: the job marked processing by a server that no longer
            // exists, and its queue entry claimed by that server's worker and never released.
            string id;
            {
                var folders = new DataFolders(new ServeOptions { Data = data });
                var store = new JobStore(folders);
                using var storage = new SQLiteStorage(folders.JobDatabase, new SQLiteStorageOptions());
                var client = new BackgroundJobClient(storage);
                var args = new GenerateArgs { Prompt = "orphan", Steps = 1, Width = 64, Height = 64, Seed = 9, Model = "tiny-sd15" };
                var record = new JobRecord
                {
                    Id = JobStore.NewId(), Type = GenerateJob.TypeName, Title = "orphan", Args = JsonSerializer.SerializeToElement(args, JobJson.Options),
                    Created = DateTimeOffset.UtcNow, State = JobStates.Running, Attempts = 1, Started = DateTimeOffset.UtcNow,
                };
                store.Create(record);
                var engineId = client.Create(Job.FromExpression<JobRunner>(r => r.Run(record.Id, CancellationToken.None)), new EnqueuedState("cpu"));
                store.Update(record.Id, r => r with { EngineId = engineId });
                using var connection = storage.GetConnection();
                var claimed = connection.FetchNextJob(["cpu"], CancellationToken.None); // never disposed: the worker died
                Assert.Equal(engineId, claimed.JobId);
                Assert.True(client.ChangeState(engineId, new DeadWorkerProcessing(), EnqueuedState.StateName));
                id = record.Id;
            }

            // Hangfire alone would hand the job out again only after its 30-minute invisibility timeout.
            await using var web = await WebHarness.Start(data);
            var done = await web.WaitJob(id, TimeSpan.FromSeconds(90));
            Assert.True(done.GetProperty("state").GetString() == "succeeded", done.ToString());
            Assert.Equal(2, done.GetProperty("attempts").GetInt32());
            Assert.Contains("the server stopped while this job ran", await web.Client.GetStringAsync($"/api/jobs/{id}/log"));
        }
        finally { WebHarness.DeleteData(data); }
    }

    /// <summary>The "Processing" state as a worker records it (Hangfire's own class is internal to construct).</summary>
    private sealed class DeadWorkerProcessing : IState
    {
        public string Name => ProcessingState.StateName;
        public string Reason => "simulated: the worker's server was killed";
        public bool IsFinal => false;
        public bool IgnoreJobLoadException => false;
        public Dictionary<string, string> SerializeData() => new()
        {
            ["StartedAt"] = JobHelper.SerializeDateTime(DateTime.UtcNow), ["ServerId"] = "dead-server", ["WorkerId"] = "worker-1",
        };
    }
}
