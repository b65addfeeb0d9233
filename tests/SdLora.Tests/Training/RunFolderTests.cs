using System.Text.Json;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class RunFolderTests
{
    [Fact]
    public void Fresh_folder_is_prepared_and_a_second_run_is_refused()
    {
        using var tmp = Fixtures.TempDir();
        var out1 = tmp.File("out");
        var run = RunFolder.Prepare(out1, false, false);
        run.WriteRunJson(new TrainingConfig());
        Directory.CreateDirectory(run.StateDir);
        File.WriteAllText(Path.Combine(run.StateDir, "state.json"), "{}");
        var ex = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(out1, false, false));
        Assert.Equal($"output {out1} already holds a training run with saved state: set resume to continue it or overwrite to replace it, or choose another output folder", ex.Message);
        Assert.Equal("output", ex.Setting);
        Assert.True(RunFolder.Prepare(out1, resume: true, overwrite: false).IsResume);
    }

    [Fact]
    public void Lora_with_loss_csv_counts_as_a_run_and_overwrite_clears_it_but_keeps_class_images()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("lora.safetensors"), "x");
        File.WriteAllText(tmp.File("loss.csv"), "step\n");
        Directory.CreateDirectory(tmp.File("class_images"));
        File.WriteAllText(Path.Combine(tmp.File("class_images"), "class_00001.png"), "x");
        Assert.Throws<SdLoraException>(() => RunFolder.Prepare(tmp.Path, false, false));
        var run = RunFolder.Prepare(tmp.Path, false, overwrite: true);
        Assert.False(File.Exists(tmp.File("lora.safetensors")));
        Assert.False(File.Exists(tmp.File("loss.csv")));
        Assert.True(File.Exists(Path.Combine(run.ClassImagesDir, "class_00001.png")));
        Assert.Equal(tmp.File("lora-000003.safetensors"), run.LoraPath("lora", 3));
    }

    [Fact]
    public void Resume_without_state_is_a_clear_error()
    {
        using var tmp = Fixtures.TempDir();
        var ex = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(tmp.Path, resume: true, overwrite: false));
        Assert.Equal($"resume: {tmp.Path} has no saved training state (state/ is missing or empty): start without resume to train from the beginning", ex.Message);
    }

    [Fact]
    public void Folder_of_a_run_that_never_saved_is_reused_without_overwrite()
    {
        // What a failed or aborted run leaves: run.json, maybe a loss log, TensorBoard events and class images.
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("run.json"), "{}");
        File.WriteAllText(tmp.File("loss.csv"), LossLog.Header + "\n1,1,0.5,0.5,0.0001,1.0\n");
        Directory.CreateDirectory(tmp.File("logs"));
        File.WriteAllText(Path.Combine(tmp.File("logs"), "events.out.tfevents.1.host"), "x");
        Directory.CreateDirectory(tmp.File("class_images"));
        File.WriteAllText(Path.Combine(tmp.File("class_images"), "class_00001.png"), "x");

        var resume = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(tmp.Path, resume: true, overwrite: false));
        Assert.Equal($"resume: {tmp.Path} has no saved training state (state/ is missing or empty; the last run there stopped before its first save): start without resume to train from the beginning", resume.Message);

        var run = RunFolder.Prepare(tmp.Path, resume: false, overwrite: false);
        Assert.False(run.IsResume);
        Assert.False(File.Exists(run.RunJson));
        Assert.False(File.Exists(run.LossCsv));
        Assert.False(Directory.Exists(run.LogsDir));
        Assert.True(File.Exists(Path.Combine(run.ClassImagesDir, "class_00001.png")));
    }

    [Fact]
    public void Overwrite_clears_old_tensorboard_events()
    {
        using var tmp = Fixtures.TempDir();
        Directory.CreateDirectory(tmp.File("state"));
        File.WriteAllText(Path.Combine(tmp.File("state"), "state.json"), "{}");
        Directory.CreateDirectory(tmp.File("logs"));
        File.WriteAllText(Path.Combine(tmp.File("logs"), "events.out.tfevents.1.host"), "x");
        var run = RunFolder.Prepare(tmp.Path, resume: false, overwrite: true);
        Assert.False(Directory.Exists(run.LogsDir));
        Assert.False(Directory.Exists(run.StateDir));
    }

    [Fact]
    public void Output_that_cannot_be_written_is_one_clear_error_before_any_work()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("a-file"), "x");
        var inside = Path.Combine(tmp.File("a-file"), "run");
        var ex = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(inside, resume: false, overwrite: false));
        Assert.StartsWith($"{inside}: cannot write the output folder there (", ex.Message);
        Assert.EndsWith("); choose a folder you can write to", ex.Message);
        Assert.Equal("output", ex.Setting);
        Assert.DoesNotContain('\n', ex.Message);
        var file = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(tmp.File("a-file"), resume: false, overwrite: false));
        Assert.Equal($"output {tmp.File("a-file")} is a file: give a folder (it is created if missing)", file.Message);
        Assert.Empty(Directory.GetFiles(tmp.Path, ".sdlora-write-test*"));
        var data = tmp.File("photos");
        Directory.CreateDirectory(data);
        var input = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(data, resume: false, overwrite: false, [data]));
        Assert.Contains("is the input", input.Message);
    }

    [Fact]
    public void Folder_with_unrelated_files_is_accepted()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("readme.txt"), "x");
        Assert.False(RunFolder.Prepare(tmp.Path, false, false).IsResume);
    }

    [Fact]
    public void Kohya_metadata_is_filled_from_config_and_dataset()
    {
        using var tmp = Fixtures.TempDir();
        var img = tmp.File("img");
        TrainingTestData.WritePngs(Path.Combine(img, "10_sks dog"), 3);
        File.WriteAllText(Path.Combine(img, "10_sks dog", "img00.txt"), "sks dog, grass");
        var c = new TrainingConfig { Model = "/m/sd15.safetensors", Data = img, Output = tmp.File("o"), Resolution = Resolution.Square(64), MaxBucketReso = 128, MinSnrGamma = 5 };
        var ds = DreamBoothDataset.Load(c);
        var planner = new BatchPlanner(ds, BucketManager.FromConfig(c), c.TrainBatchSize, c.Seed);
        var md = c.ToKohyaMetadata(TrainingDataSummary.From(c, ds, planner), DateTimeOffset.FromUnixTimeSeconds(1700000000));
        Assert.Equal("0.0001", md["ss_learning_rate"]);
        Assert.Equal("5E-05", md["ss_text_encoder_lr"]);
        Assert.Equal("30", md["ss_num_train_images"]);
        Assert.Equal("0", md["ss_num_reg_images"]);
        Assert.Equal("300", md["ss_max_train_steps"]);
        Assert.Equal("10", md["ss_num_epochs"]);
        Assert.Equal("(64, 64)", md["ss_resolution"]);
        Assert.Equal("5", md["ss_min_snr_gamma"]);
        Assert.Equal("1700000000", md["ss_training_started_at"]);
        Assert.Equal("sd15.safetensors", md["ss_sd_model_name"]);
        Assert.Equal("64", md["ss_min_bucket_reso"]); // unset: follows the 64 px resolution
        var tags = JsonDocument.Parse(md["ss_tag_frequency"]).RootElement.GetProperty("10_sks dog");
        Assert.Equal(3, tags.GetProperty("sks dog").GetInt32());
        Assert.Equal(1, tags.GetProperty("grass").GetInt32());
        Assert.Equal(30, JsonDocument.Parse(md["ss_bucket_info"]).RootElement.GetProperty("buckets").GetProperty("0").GetProperty("count").GetInt32());
    }
}
