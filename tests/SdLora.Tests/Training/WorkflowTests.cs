using SdLora.Imaging;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

/// <summary>The CPU workflow around training: phase times, estimates, class-image defaults and the class-image cache.</summary>
public class WorkflowTests
{
    [Fact]
    public void Phase_timer_adds_up_repeated_phases_in_first_seen_order()
    {
        var timer = new PhaseTimer();
        timer.Add("load", 2);
        timer.Add("step", 1.5);
        timer.Add("step", 0.5);
        Assert.Equal(7, timer.Time("save", () => 7));
        Assert.Throws<InvalidOperationException>(() => timer.Time("fail", () => throw new InvalidOperationException()));
        Assert.Equal(["load", "step", "save", "fail"], timer.Phases.Select(p => p.Phase));
        Assert.Equal(("step", 2.0, 2), (timer.Phases[1].Phase, timer.Phases[1].Seconds, timer.Phases[1].Count));
        if (OperatingSystem.IsLinux())
            Assert.All(timer.Phases, p => Assert.True(p.ResidentBytesAfter > 0 && p.PeakResidentBytes >= p.ResidentBytesAfter, p.Phase));
        Assert.True(timer.TotalSeconds >= 4);
    }

    [Fact]
    public void Estimate_multiplies_measured_steps_by_the_work_of_each_phase()
    {
        var t = new StepTimings(512, 512, CfgStepSeconds: 6, DecodeSeconds: 4, EncodeSeconds: 2);
        var phases = WorkflowEstimate.Estimate(t, classImages: 8, classSteps: 12, latentImages: 12, trainSteps: 70, gradientCheckpointing: false);
        Assert.Equal(["class images", "latent caching", "training"], phases.Select(p => p.Phase));
        Assert.Equal(8 * (12 * 6 + 4), phases[0].Seconds);
        Assert.Equal(12 * 2, phases[1].Seconds);
        Assert.Equal(70 * 6, phases[2].Seconds);
        var checkpointed = WorkflowEstimate.Estimate(t, 0, 12, 0, 10, gradientCheckpointing: true, samples: 2, sampleSteps: 20);
        Assert.Equal(["training", "sampling"], checkpointed.Select(p => p.Phase));
        Assert.Equal(10 * 1.5 * 6, checkpointed[0].Seconds);
        Assert.Equal(2 * (20 * 6 + 4), checkpointed[1].Seconds);
        Assert.Equal("11 min 00 s", WorkflowEstimate.Format(660));
        Assert.Equal("1 h 05 min", WorkflowEstimate.Format(3900));
    }

    [Fact]
    public void Class_images_default_to_few_fast_ones_on_the_cpu_and_diffusers_defaults_on_a_gpu()
    {
        var cpu = new TrainingConfig();
        Assert.Equal((8, 12, "DPM++ 2M Karras"), (cpu.EffectiveNumClassImages, cpu.EffectiveClassImageSteps, cpu.EffectiveClassImageSampler));
        var gpu = new TrainingConfig { Device = "cuda" };
        Assert.Equal((100, 20, "DDIM"), (gpu.EffectiveNumClassImages, gpu.EffectiveClassImageSteps, gpu.EffectiveClassImageSampler));
        var given = new TrainingConfig { NumClassImages = 3, ClassImageSteps = 30, ClassImageSampler = "Euler a" };
        Assert.Equal((3, 30, "Euler a"), (given.EffectiveNumClassImages, given.EffectiveClassImageSteps, given.EffectiveClassImageSampler));
        Assert.Throws<SdLoraException>(() => new TrainingConfig { ClassImageSampler = "warp drive" }.Validate(requirePaths: false));
        Assert.Throws<SdLoraException>(() => new TrainingConfig { ClassImageSteps = 0 }.Validate(requirePaths: false));
        Assert.Null(new TrainingConfig { ClassImageCache = "none" }.ClassImageCacheFolder);
        Assert.Equal(Path.Combine(UserCache.Folder, "class-images"), cpu.ClassImageCacheFolder);
    }

    [Fact]
    public void Class_image_cache_key_changes_with_model_prompt_size_sampler_and_steps()
    {
        string Key(string model = "abc", string prompt = "a dog", int w = 512, string sampler = "DDIM", int steps = 20, double cfg = 7, int clip = 1) =>
            ClassImageCache.Key(model, prompt, w, 512, sampler, steps, cfg, clip);
        var keys = new[] { Key(), Key(model: "abd"), Key(prompt: "a cat"), Key(w: 768), Key(sampler: "Euler"), Key(steps: 12), Key(cfg: 5), Key(clip: 2) };
        Assert.Equal(keys.Length, keys.Distinct().Count());
        Assert.Equal(Key(), Key());
    }

    [Fact]
    public void Class_image_cache_copies_what_a_folder_lacks_and_takes_new_images()
    {
        using var dir = Fixtures.TempDir();
        var cache = new ClassImageCache(dir.File("cache"));
        var made = dir.File("made");
        var image = new RgbImage(8, 8, new byte[8 * 8 * 3]);
        var paths = Enumerable.Range(0, 3).Select(_ => ClassImageFolder.Save(made, image, "a dog")).ToList();
        foreach (var p in paths) cache.Add("k", p);
        cache.Add("k", paths[0]); // already there: nothing changes
        Assert.Equal(3, cache.Images("k").Count);
        Assert.Empty(cache.Images("other"));

        var run = dir.File("run");
        Assert.Equal(2, cache.CopyInto("k", run, 2));
        Assert.Equal(2, ClassImageFolder.CountExisting(run));
        Assert.Equal("a dog", File.ReadAllText(Path.Combine(run, "class_00001.txt")));
        // The next call only adds what the folder does not hold yet.
        Assert.Equal(1, cache.CopyInto("k", run, 5));
        Assert.Equal(3, ClassImageFolder.CountExisting(run));
        Assert.Equal(0, cache.CopyInto("k", run, 5));
    }
}
