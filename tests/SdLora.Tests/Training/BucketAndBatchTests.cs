using SdLora.Imaging;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class BucketAndBatchTests
{
    [Fact]
    public void Bucket_resolutions_match_kohya_for_512()
    {
        // Expected list computed with kohya's make_bucket_resolutions((512, 512), 256, 1024, 64).
        var expected = new (int, int)[] { (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576), (512, 512),
            (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256) };
        var actual = BucketManager.MakeBucketResolutions(Resolution.Square(512)).Select(r => (r.Width, r.Height));
        Assert.Equal(expected, actual);
    }

    [Theory]
    [InlineData(1000, 1000, 512, 512, 512, 512)]
    [InlineData(4000, 3000, 576, 448, 597, 448)]
    [InlineData(3000, 4000, 448, 576, 448, 597)]
    [InlineData(1920, 1080, 640, 384, 683, 384)]
    [InlineData(100, 1000, 256, 1024, 256, 2560)]
    [InlineData(600, 400, 640, 384, 640, 427)]
    public void Images_go_to_the_nearest_aspect_bucket_and_cover_it(int w, int h, int bw, int bh, int rw, int rh)
    {
        var buckets = new BucketManager(Resolution.Square(512));
        var p = buckets.Place(w, h);
        Assert.Equal(new Resolution(bw, bh), p.Bucket);
        Assert.Equal((rw, rh), (p.ResizedWidth, p.ResizedHeight));
        Assert.Equal(((rw - bw) / 2, (rh - bh) / 2), (p.CropX, p.CropY));
    }

    [Fact]
    public void Without_buckets_every_image_is_cropped_to_the_resolution()
    {
        var buckets = new BucketManager(Resolution.Square(512), enabled: false);
        var p = buckets.Place(1920, 1080);
        Assert.Equal(Resolution.Square(512), p.Bucket);
        Assert.Equal((910, 512), (p.ResizedWidth, p.ResizedHeight));
        Assert.Equal(199, p.CropX);
    }

    [Fact]
    public void No_upscale_keeps_small_images_at_their_size_rounded_to_the_step()
    {
        var buckets = new BucketManager(Resolution.Square(512), noUpscale: true);
        Assert.Equal(new Resolution(320, 192), buckets.SelectBucket(330, 200));
        var big = buckets.SelectBucket(2000, 1000);
        Assert.True(big.Area <= 512 * 512 && big.Width % 64 == 0 && big.Height % 64 == 0);
    }

    [Fact]
    public void Placement_transform_gives_the_bucket_size_from_a_real_photo()
    {
        var img = RgbImage.Load(Path.Combine(TrainingTestData.PhotosDir("dog"), "00.jpg"));
        var p = new BucketManager(new Resolution(256, 256), 128, 512).Place(img.Width, img.Height);
        var outImg = p.Apply(img, flip: true);
        Assert.Equal((p.Bucket.Width, p.Bucket.Height), (outImg.Width, outImg.Height));
    }

    [Fact]
    public void Area_resize_averages_exactly()
    {
        // 4x2 -> 2x1: each output pixel is the mean of a 2x2 block.
        var px = new byte[] { 0, 0, 0, 100, 100, 100, 10, 10, 10, 10, 10, 10, 200, 200, 200, 100, 100, 100, 30, 30, 30, 50, 50, 50 };
        var r = ImageOps.Resize(new RgbImage(4, 2, px), 2, 1);
        Assert.Equal(new byte[] { 100, 100, 100, 25, 25, 25 }, r.Pixels);
        var up = ImageOps.Resize(new RgbImage(4, 2, px), 8, 4);
        Assert.Equal((8, 4), (up.Width, up.Height));
    }

    private static DreamBoothDataset MixedDataset(TempDir tmp)
    {
        var img = tmp.File("img");
        TrainingTestData.WritePngs(Path.Combine(img, "3_sks dog"), 4, 64, 64);
        TrainingTestData.WritePngs(Path.Combine(img, "2_sks wide"), 3, 256, 64);
        var reg = tmp.File("reg");
        TrainingTestData.WritePngs(Path.Combine(reg, "1_dog"), 5, 64, 64);
        return DreamBoothDataset.Load(new DatasetOptions(img, RegData: reg));
    }

    [Fact]
    public void Batch_order_is_reproducible_from_seed_and_epoch_and_stays_within_buckets()
    {
        using var tmp = Fixtures.TempDir();
        var ds = MixedDataset(tmp);
        var buckets = new BucketManager(new Resolution(128, 128), 64, 256, 64);
        var caps = new CaptionProcessor(Shuffle: true);
        var a = new BatchPlanner(ds, buckets, 2, seed: 1234, caps);
        var b = new BatchPlanner(ds, buckets, 2, seed: 1234, caps);
        string Order(BatchPlanner p, int e) => string.Join("|", p.Epoch(e).Select(x => x.Bucket + ":" + string.Join(",", x.Items.Select(i => Path.GetFileName(i.Image.Path) + i.Image.SubsetName))));
        Assert.Equal(Order(a, 0), Order(b, 0));
        Assert.Equal(Order(a, 3), Order(b, 3));
        Assert.NotEqual(Order(a, 0), Order(a, 1));
        Assert.NotEqual(Order(a, 0), Order(new BatchPlanner(ds, buckets, 2, seed: 99, caps), 0));
        foreach (var batch in a.Epoch(0))
            Assert.All(batch.Items, i => Assert.Equal(batch.Bucket, i.Placement.Bucket));
        Assert.Equal(2, a.BucketCounts.Count);
    }

    [Fact]
    public void Repeats_and_regularization_balance_follow_kohya()
    {
        using var tmp = Fixtures.TempDir();
        var ds = MixedDataset(tmp);
        Assert.Equal(18, ds.NumTrainImages); // 4x3 + 3x2
        var planner = new BatchPlanner(ds, new BucketManager(new Resolution(128, 128), 64, 256, 64), 4, seed: 1);
        var items = planner.Epoch(0).SelectMany(b => b.Items).ToList();
        Assert.Equal(18, items.Count(i => !i.IsRegularization));
        Assert.Equal(18, items.Count(i => i.IsRegularization)); // 5 class images cycled up to 18 draws
        var regCounts = items.Where(i => i.IsRegularization).GroupBy(i => i.Image.Path).Select(g => g.Count()).Order().ToList();
        Assert.Equal([3, 3, 4, 4, 4], regCounts);
        Assert.Equal(36, planner.BucketCounts.Values.Sum());
        Assert.Equal(planner.BatchesPerEpoch, planner.Epoch(0).Count);
        Assert.Equal(5, planner.StepsPerEpoch(2));
        var c = new TrainingConfig { MaxTrainEpochs = 3, GradientAccumulationSteps = 2 };
        Assert.Equal(15, planner.TotalSteps(c));
        Assert.Equal(4, planner.TotalEpochs(c with { MaxTrainSteps = 16 }));
        Assert.Contains("256x64: 6", planner.BucketSummary());
        Assert.Contains("\"mean_img_ar_error\"", planner.BucketInfoJson());
    }

    [Fact]
    public void Caption_shuffle_keeps_leading_tokens_and_dropout_empties()
    {
        var p = new CaptionProcessor(Shuffle: true, KeepTokens: 2);
        const string caption = "sks, dog, grass, sky, ball, tree, lake";
        var seen = new HashSet<string>();
        for (int i = 0; i < 20; i++)
        {
            var s = p.Process(caption, seed: 5, epoch: 0, sampleIndex: i);
            Assert.StartsWith("sks, dog, ", s);
            Assert.Equal(CaptionProcessor.SplitTags(caption).Order(), CaptionProcessor.SplitTags(s).Order());
            seen.Add(s);
        }
        Assert.True(seen.Count > 5);
        Assert.Equal(p.Process(caption, 5, 1, 3), p.Process(caption, 5, 1, 3));
        Assert.Equal("", new CaptionProcessor(DropoutRate: 1.0).Process(caption, 1, 0, 0));
        Assert.Equal(caption, new CaptionProcessor().Process(caption, 1, 0, 0));
        int dropped = Enumerable.Range(0, 1000).Count(i => new CaptionProcessor(DropoutRate: 0.1).Process("x", 3, 0, i) == "");
        Assert.InRange(dropped, 70, 130);
    }
}
