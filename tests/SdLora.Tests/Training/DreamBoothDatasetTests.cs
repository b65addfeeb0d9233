using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class DreamBoothDatasetTests
{
    [Fact]
    public void Plain_folder_of_photos_uses_instance_prompt_and_caption_files_win()
    {
        using var tmp = Fixtures.TempDir();
        var dir = tmp.File("photos");
        TrainingTestData.CopyPhotos("dog", dir, 3);
        var first = Directory.GetFiles(dir).Order().First();
        File.WriteAllText(Path.ChangeExtension(first, ".txt"), "sks dog, on grass\n");
        var ds = DreamBoothDataset.Load(new DatasetOptions(dir, InstancePrompt: "a photo of sks dog", NumRepeats: 5));
        Assert.Equal(DatasetLayout.PlainFolder, ds.Layout);
        var subset = Assert.Single(ds.Subsets);
        Assert.Equal(3, subset.Images.Count);
        Assert.Equal(5, subset.Repeats);
        Assert.Equal(15, ds.NumTrainImages);
        Assert.Equal("sks dog, on grass", subset.Images[0].Caption);
        Assert.True(subset.Images[0].CaptionFromFile);
        Assert.Equal("a photo of sks dog", subset.Images[1].Caption);
        Assert.Equal(1, subset.CaptionFilesFound);
        Assert.True(subset.Images[1].Width > 500);
        Assert.Contains("3 images x 5 repeats, 1 caption files", ds.Summary());
    }

    [Fact]
    public void Caption_extension_and_dot_caption_files_are_read()
    {
        using var tmp = Fixtures.TempDir();
        var dir = tmp.File("set");
        TrainingTestData.WritePngs(dir, 2);
        File.WriteAllText(Path.Combine(dir, "img00.caption"), "from caption");
        File.WriteAllText(Path.Combine(dir, "img01.cap"), "from cap");
        var ds = DreamBoothDataset.Load(new DatasetOptions(dir, CaptionExtension: ".cap"));
        Assert.Equal(["from caption", "from cap"], ds.Subsets[0].Images.Select(i => i.Caption));
    }

    [Fact]
    public void Kohya_layout_reads_repeats_and_class_tokens_and_reg_folders()
    {
        using var tmp = Fixtures.TempDir();
        var img = tmp.File("img");
        TrainingTestData.WritePngs(Path.Combine(img, "10_sks dog"), 3);
        TrainingTestData.WritePngs(Path.Combine(img, "4_sks cat"), 2);
        var reg = tmp.File("reg");
        TrainingTestData.WritePngs(Path.Combine(reg, "1_dog"), 4);
        var ds = DreamBoothDataset.Load(new DatasetOptions(img, RegData: reg));
        Assert.Equal(DatasetLayout.Kohya, ds.Layout);
        Assert.Equal(["10_sks dog", "4_sks cat"], ds.TrainSubsets.Select(s => s.Name));
        Assert.Equal(10, ds.TrainSubsets.First().Repeats);
        Assert.All(ds.TrainSubsets.First().Images, i => Assert.Equal("sks dog", i.Caption));
        Assert.Equal(38, ds.NumTrainImages);
        var r = Assert.Single(ds.RegSubsets);
        Assert.All(r.Images, i => { Assert.True(i.IsRegularization); Assert.Equal("dog", i.Caption); });
        Assert.Equal(4, ds.NumRegImages);
        Assert.Equal("""{"10_sks dog":{"n_repeats":10,"img_count":3},"4_sks cat":{"n_repeats":4,"img_count":2}}""", ds.DatasetDirsJson(false));
        Assert.Equal(3, ds.TagFrequency()["10_sks dog"]["sks dog"]);
    }

    [Fact]
    public void Instance_prompt_with_kohya_root_is_a_wrong_level_error()
    {
        using var tmp = Fixtures.TempDir();
        var img = tmp.File("img");
        TrainingTestData.WritePngs(Path.Combine(img, "10_sks dog"), 1);
        var ex = Assert.Throws<SdLoraException>(() => DreamBoothDataset.Load(new DatasetOptions(img, InstancePrompt: "a photo of sks dog")));
        Assert.Equal($"data {img} is a kohya dataset root (sub-folders '10_sks dog'), but instance-prompt asks for a plain folder of images: leave instance-prompt unset (the folder names carry the prompt), or point data at the folder that holds the photos", ex.Message);
    }

    [Fact]
    public void Pointing_at_one_kohya_subset_folder_says_to_pass_its_parent()
    {
        using var tmp = Fixtures.TempDir();
        var sub = Path.Combine(tmp.File("img"), "10_sks dog");
        TrainingTestData.WritePngs(sub, 2);
        var ex = Assert.Throws<SdLoraException>(() => DreamBoothDataset.Load(new DatasetOptions(sub)));
        Assert.Equal($"data {sub} is one kohya subset folder (10 repeats, prompt 'sks dog'): use its parent folder {tmp.File("img")} instead, or set instance-prompt to use it as a plain folder of images", ex.Message);
    }

    [Fact]
    public void Pointing_above_the_kohya_root_names_the_right_folder()
    {
        using var tmp = Fixtures.TempDir();
        TrainingTestData.WritePngs(Path.Combine(tmp.Path, "project", "img", "10_sks dog"), 1);
        var ex = Assert.Throws<SdLoraException>(() => DreamBoothDataset.Load(new DatasetOptions(tmp.File("project"))));
        Assert.Equal($"data {tmp.File("project")} is one level above a kohya dataset: use data {Path.Combine(tmp.Path, "project", "img")} (the folder whose sub-folders are named like '10_sks dog')", ex.Message);
    }

    [Fact]
    public void Photos_in_a_plain_sub_folder_are_pointed_out()
    {
        using var tmp = Fixtures.TempDir();
        TrainingTestData.WritePngs(Path.Combine(tmp.Path, "data", "photos"), 2);
        var ex = Assert.Throws<SdLoraException>(() => DreamBoothDataset.Load(new DatasetOptions(tmp.File("data"), InstancePrompt: "sks")));
        Assert.StartsWith($"data {tmp.File("data")} has no images itself, but its sub-folder(s) 'photos' do: use data {Path.Combine(tmp.Path, "data", "photos")}", ex.Message);
    }

    [Fact]
    public void Empty_folder_is_a_clear_error()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllText(tmp.File("notes.txt"), "hi");
        var ex = Assert.Throws<SdLoraException>(() => DreamBoothDataset.Load(new DatasetOptions(tmp.Path, InstancePrompt: "sks")));
        Assert.Equal($"data {tmp.Path}: no images found (jpg, png, webp or bmp)", ex.Message);
    }

    [Fact]
    public void Missing_folder_is_a_clear_error()
    {
        var ex = Assert.Throws<SdLoraException>(() => DreamBoothDataset.Load(new DatasetOptions("/nonexistent/sdlora/x")));
        Assert.Equal("data /nonexistent/sdlora/x: folder not found", ex.Message);
    }

    [Fact]
    public void Corrupt_image_is_skipped_and_listed()
    {
        using var tmp = Fixtures.TempDir();
        TrainingTestData.WritePngs(tmp.Path, 2);
        var bad = tmp.File("broken.jpg");
        File.WriteAllBytes(bad, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]);
        File.WriteAllBytes(tmp.File("anim.gif"), [0x47, 0x49, 0x46]);
        var ds = DreamBoothDataset.Load(new DatasetOptions(tmp.Path, InstancePrompt: "sks"));
        Assert.Equal(2, ds.Subsets[0].Images.Count);
        Assert.Equal(2, ds.Unreadable.Count);
        Assert.Contains(ds.Unreadable, u => u.Path == bad && u.Reason.Contains("not a readable image"));
        Assert.Contains(ds.Unreadable, u => u.Path.EndsWith("anim.gif") && u.Reason.Contains("not supported"));
        Assert.Contains("skipped 2 unreadable file(s)", ds.Summary());
    }

    [Fact]
    public void Truncated_jpeg_is_skipped_and_listed_like_an_unreadable_one()
    {
        using var tmp = Fixtures.TempDir();
        TrainingTestData.CopyPhotos("dog", tmp.Path, 2);
        var photos = Directory.GetFiles(tmp.Path, "*.jpg").Order().ToList();
        // An interrupted download: the first 60 % of a real photo. Its header is fine; its pixels stop part-way.
        var bytes = File.ReadAllBytes(photos[1]);
        File.WriteAllBytes(photos[1], bytes[..(bytes.Length * 6 / 10)]);
        var ds = DreamBoothDataset.Load(new DatasetOptions(tmp.Path, InstancePrompt: "sks"));
        Assert.Equal([photos[0]], ds.Subsets[0].Images.Select(i => i.Path));
        var skipped = Assert.Single(ds.Unreadable);
        Assert.Equal(photos[1], skipped.Path);
        Assert.Contains("cut short", skipped.Reason);
        Assert.Contains(photos[1], ds.Summary());
    }

    [Fact]
    public void Only_corrupt_images_is_an_error_listing_them()
    {
        using var tmp = Fixtures.TempDir();
        File.WriteAllBytes(tmp.File("a.png"), [1, 2, 3]);
        var ex = Assert.Throws<SdLoraException>(() => DreamBoothDataset.Load(new DatasetOptions(tmp.Path, InstancePrompt: "sks")));
        Assert.StartsWith($"data {tmp.Path}: no usable images; 1 file(s) could not be read: a.png: not a readable image", ex.Message);
    }

    [Fact]
    public void Plain_folder_without_prompt_or_captions_asks_for_instance_prompt()
    {
        using var tmp = Fixtures.TempDir();
        TrainingTestData.WritePngs(tmp.Path, 2);
        var ex = Assert.Throws<SdLoraException>(() => DreamBoothDataset.Load(new DatasetOptions(tmp.Path)));
        Assert.Contains("2 image(s) have no caption file (e.g. img00.png): set instance-prompt", ex.Message);
    }

    [Fact]
    public void Class_data_folder_joins_as_regularization_with_class_prompt()
    {
        using var tmp = Fixtures.TempDir();
        TrainingTestData.WritePngs(tmp.File("inst"), 2);
        var cls = tmp.File("cls");
        Directory.CreateDirectory(cls);
        ClassImageFolder.Save(cls, new SdLora.Imaging.RgbImage(8, 8, new byte[192]), "a photo of dog, saved");
        TrainingTestData.WritePng(Path.Combine(cls, "extra.png"));
        Assert.Equal(2, ClassImageFolder.CountExisting(cls));
        Assert.Equal(3, ClassImageFolder.Missing(cls, 5));
        var ds = DreamBoothDataset.Load(new DatasetOptions(tmp.File("inst"), InstancePrompt: "sks dog", ClassData: cls, ClassPrompt: "a photo of dog"));
        var reg = Assert.Single(ds.RegSubsets);
        Assert.Equal(["a photo of dog, saved", "a photo of dog"], reg.Images.Select(i => i.Caption));
    }
}
