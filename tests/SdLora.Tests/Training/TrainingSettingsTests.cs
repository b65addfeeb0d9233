using System.Reflection;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class TrainingSettingsTests
{
    private static Dictionary<string, object?> Paths() => new() { ["model"] = "m.safetensors", ["data"] = "d", ["output"] = "o" };

    [Fact]
    public void Every_config_property_is_described_exactly_once()
    {
        var properties = typeof(TrainingConfig).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite)
            .Select(p => p.Name).Order().ToList();
        Assert.Equal(properties.Count, TrainingSettings.All.Count);
        var defaults = new TrainingConfig();
        foreach (var s in TrainingSettings.All)
        {
            Assert.Matches("^[a-z][a-z0-9]*(-[a-z0-9]+)*$", s.Name);
            Assert.Matches("^[a-z][a-z0-9]*(_[a-z0-9]+)*$", s.KohyaName);
            Assert.False(string.IsNullOrWhiteSpace(s.Description), s.Name);
            Assert.DoesNotContain('\n', s.Description);
            Assert.Equal(TrainingSetting.Format(s.Get(defaults)), TrainingSetting.Format(s.Default));
            Assert.Same(s, TrainingSettings.Find(s.Name));
            Assert.Same(s, TrainingSettings.Find("--" + s.KohyaName));
        }
        Assert.Equal(TrainingSettings.All.Count, TrainingSettings.All.Select(s => s.Name).Distinct().Count());
        Assert.Contains(TrainingSettings.All, s => s.Advanced);
        Assert.Contains(TrainingSettings.All, s => !s.Advanced);
    }

    [Fact]
    public void Kohya_names_and_aliases_find_their_setting()
    {
        Assert.Equal("model", TrainingSettings.Find("pretrained_model_name_or_path")!.Name);
        Assert.Equal("data", TrainingSettings.Find("--train_data_dir")!.Name);
        Assert.Equal("data", TrainingSettings.Find("instance-data-dir")!.Name);
        Assert.Equal("output", TrainingSettings.Find("output_dir")!.Name);
        Assert.Equal("output", TrainingSettings.Find("--out")!.Name);
        Assert.Equal("optimizer", TrainingSettings.Find("optimizer_type")!.Name);
        Assert.Equal("save-last-n-epochs", TrainingSettings.Find("save_last_n_epochs")!.Name);
        Assert.Null(TrainingSettings.Find("xformers"));
        Assert.NotNull(TrainingSettings.FindKohyaOnly("--xformers"));
    }

    // Values that only make sense with another setting: what they need alongside.
    private static readonly Dictionary<(string, string), Dictionary<string, object?>> Companions = new()
    {
        [("method", "textual-inversion")] = new() { ["token-string"] = "sks" },
        [("save-model-as", "diffusers")] = new() { ["method"] = "dreambooth" },
        [("template", "object")] = new() { ["method"] = "textual-inversion", ["token-string"] = "sks" },
        [("template", "style")] = new() { ["method"] = "textual-inversion", ["token-string"] = "sks" },
    };

    [Fact]
    public void Every_allowed_value_is_accepted_and_others_are_refused()
    {
        foreach (var s in TrainingSettings.All.Where(s => s.AllowedValues.Count > 0))
        {
            foreach (var v in s.AllowedValues)
            {
                var values = new Dictionary<string, object?>(Paths()) { [s.Name] = v };
                foreach (var (k, extra) in Companions.GetValueOrDefault((s.Name, v)) ?? []) values[k] = extra;
                TrainingConfigLoader.Load(null, values);
            }
            var e = Assert.Throws<SdLoraException>(() => TrainingConfigLoader.Load(null, new Dictionary<string, object?>(Paths()) { [s.Name] = "bogus" }));
            Assert.Equal(s.Name, e.Setting);
            Assert.StartsWith(s.Name + " ", e.Message);
        }
    }

    [Fact]
    public void Bucket_range_follows_the_resolution_unless_set()
    {
        var small = TrainingConfigLoader.Load(null, new Dictionary<string, object?>(Paths()) { ["resolution"] = "64" });
        Assert.Equal(64, small.EffectiveMinBucketReso);
        Assert.Equal(1024, small.EffectiveMaxBucketReso);
        var large = TrainingConfigLoader.Load(null, new Dictionary<string, object?>(Paths()) { ["resolution"] = "1536,1024" });
        Assert.Equal((256, 1536), (large.EffectiveMinBucketReso, large.EffectiveMaxBucketReso));
        var usual = TrainingConfigLoader.Load(null, Paths());
        Assert.Equal((256, 1024), (usual.EffectiveMinBucketReso, usual.EffectiveMaxBucketReso));

        var e = Assert.Throws<SdLoraException>(() =>
            TrainingConfigLoader.Load(null, new Dictionary<string, object?>(Paths()) { ["resolution"] = "64", ["min-bucket-reso"] = "256" }));
        Assert.Equal("resolution 64,64 lies outside the bucket range 256..1024: widen min-bucket-reso/max-bucket-reso (or leave them unset to follow the resolution)", e.Message);
    }

    [Fact]
    public void Kohya_only_options_are_noted_or_refused()
    {
        var notes = new List<string>();
        var c = TrainingConfigLoader.Load(null, new Dictionary<string, object?>(Paths())
        {
            ["xformers"] = true, ["save_state"] = true, ["save_model_as"] = "safetensors", ["save_last_n_epochs"] = "3",
        }, notes: notes);
        Assert.Equal(3, c.SaveLastNEpochs);
        Assert.Equal(2, notes.Count);
        Assert.Contains(notes, n => n.StartsWith("xformers: "));
        Assert.Contains(notes, n => n.StartsWith("save-state: "));
        var e = Assert.Throws<SdLoraException>(() => TrainingConfigLoader.Load(null, new Dictionary<string, object?>(Paths()) { ["save_model_as"] = "ckpt" }));
        Assert.Equal("save-model-as ckpt is not written by sdlora (pickles can carry code): use safetensors, which A1111, ComfyUI and kohya load", e.Message);
    }

    [Fact]
    public void Shipped_example_settings_and_prompts_load()
    {
        var notes = new List<string>();
        var toml = Path.Combine(Fixtures.RepoRoot, "examples", "train.toml");
        var c = TrainingConfigLoader.Load(toml, notes: notes);
        Assert.Empty(notes);
        Assert.Equal("examples/prompts.txt", c.SamplePrompts);
        Assert.NotNull(c.ClassPrompt);
        var prompts = SamplePrompts.Read(Path.Combine(Fixtures.RepoRoot, c.SamplePrompts!), c.Resolution.Width, c.Resolution.Height, c.Seed);
        Assert.NotEmpty(prompts);
        Assert.All(prompts, p => Assert.Contains("sks", p.Prompt));
    }
}
