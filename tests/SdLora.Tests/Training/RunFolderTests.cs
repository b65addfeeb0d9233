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
    [Fact]
    public void Epoch_results_are_found_by_kohyas_six_digit_names_only()
    {
        using var tmp = Fixtures.TempDir();
        var run = RunFolder.Prepare(tmp.Path, false, false);
        foreach (var f in new[] { "dog-000003.safetensors", "dog-000010.safetensors", "dog-3.safetensors", "dog-00000a.safetensors",
                     "dog-0000001.safetensors", "dog.safetensors", "cat-000001.safetensors", "dog-000004.txt" })
            File.WriteAllText(tmp.File(f), "x");
        Directory.CreateDirectory(tmp.File("dog-000005"));
        Directory.CreateDirectory(tmp.File("dog-final"));
        Assert.Equal([(3, tmp.File("dog-000003.safetensors")), (10, tmp.File("dog-000010.safetensors"))],
            run.EpochLoras("dog").Select(kv => (kv.Key, kv.Value)));
        Assert.Equal([3, 5, 10], run.EpochOutputs("dog").Keys);
        Assert.Equal(tmp.File("dog-000005"), run.EpochOutputs("dog")[5]);
        Assert.Equal(tmp.File("dog.safetensors"), run.LoraPath("dog"));
        Assert.Equal(tmp.File("dog-000012"), run.ModelFolderPath("dog", 12));
        Assert.Equal(tmp.File("dog"), run.ModelFolderPath("dog"));
    }

    [Fact]
    public void Resume_and_overwrite_together_are_refused_as_one_setting()
    {
        using var tmp = Fixtures.TempDir();
        var ex = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(tmp.Path, resume: true, overwrite: true));
        Assert.Equal("resume and overwrite exclude each other: resume continues the run in the output folder, overwrite discards it", ex.Message);
        Assert.Equal("overwrite", ex.Setting);
    }

    [Fact]
    public void State_left_as_state_old_by_a_cut_off_save_still_counts_as_saved()
    {
        using var tmp = Fixtures.TempDir();
        Directory.CreateDirectory(tmp.File("state.old"));
        File.WriteAllText(Path.Combine(tmp.File("state.old"), "state.json"), "{}");
        Assert.True(RunFolder.HasSavedState(tmp.Path));
        Assert.True(RunFolder.Prepare(tmp.Path, resume: true, overwrite: false).IsResume);
        var ex = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(tmp.Path, false, false));
        Assert.Contains("already holds a training run with saved state", ex.Message);
        // An empty state/ is not saved state.
        using var empty = Fixtures.TempDir();
        Directory.CreateDirectory(empty.File("state"));
        Assert.False(RunFolder.HasSavedState(empty.Path));
    }

    [Fact]
    public void A_fine_tuned_model_folder_beside_loss_csv_is_a_run_and_overwrite_removes_it_but_not_the_caches()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("loss.csv"), "step\n");
        Directory.CreateDirectory(tmp.File("dog"));
        File.WriteAllText(Path.Combine(tmp.File("dog"), "model_index.json"), "{}");
        Directory.CreateDirectory(tmp.File("notes"));
        Directory.CreateDirectory(tmp.File("latent_cache"));
        File.WriteAllText(Path.Combine(tmp.File("latent_cache"), "a.safetensors"), "x");
        Assert.True(RunFolder.HoldsRun(tmp.Path));
        var ex = Assert.Throws<SdLoraException>(() => RunFolder.Prepare(tmp.Path, false, false));
        Assert.Equal($"output {tmp.Path} already holds a trained LoRA with its loss.csv: set overwrite to replace it, or choose another output folder", ex.Message);
        RunFolder.Prepare(tmp.Path, false, overwrite: true);
        Assert.False(Directory.Exists(tmp.File("dog")));
        Assert.True(Directory.Exists(tmp.File("notes")));
        Assert.True(File.Exists(Path.Combine(tmp.File("latent_cache"), "a.safetensors")));
        // loss.csv alone (a run stopped before its first save) or a model folder alone is not a run.
        using var lossOnly = Fixtures.TempDir();
        File.WriteAllText(lossOnly.File("loss.csv"), "step\n");
        Directory.CreateDirectory(lossOnly.File("dog"));
        Assert.False(RunFolder.HoldsRun(lossOnly.Path));
        Assert.False(RunFolder.HoldsRun(lossOnly.File("missing")));
    }

    [Fact]
    public void A_damaged_run_json_is_named_with_the_fix()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("run.json"), "{ not json");
        var ex = Assert.Throws<SdLoraException>(() => RunFolder.ReadRunJson(tmp.File("run.json")));
        Assert.StartsWith($"{tmp.File("run.json")}: not a readable run.json (", ex.Message);
        Assert.EndsWith("); delete it, or set overwrite", ex.Message);
        File.WriteAllText(tmp.File("run.json"), "null");
        ex = Assert.Throws<SdLoraException>(() => RunFolder.ReadRunJson(tmp.File("run.json")));
        Assert.Equal($"{tmp.File("run.json")}: not a readable run.json (empty); delete it, or set overwrite", ex.Message);
    }
}
