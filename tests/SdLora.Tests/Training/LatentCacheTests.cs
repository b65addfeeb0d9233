using SdLora.Imaging;
using SdLora.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Training;

public class LatentCacheTests
{
    private static TrainingImage Image(string path) => new(path, "x", false, 64, 64, false, "s");

    [Fact]
    public void Key_changes_with_image_content_bucket_crop_and_flip()
    {
        using var tmp = Fixtures.TempDir();
        var path = TrainingTestData.WritePng(tmp.File("a.png"));
        var place = new ImagePlacement(Resolution.Square(64), 64, 64, 0, 0);
        var k = LatentCacheKey.For(path, place, false);
        Assert.Equal(k, LatentCacheKey.For(path, place, false));
        Assert.NotEqual(k, LatentCacheKey.For(path, place, true));
        Assert.NotEqual(k, LatentCacheKey.For(path, place with { Bucket = new Resolution(64, 128) }, false));
        Assert.NotEqual(k, LatentCacheKey.For(path, place with { CropX = 1 }, false));
        TrainingTestData.WritePng(path, 64, 64, shade: 3);
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(1));
        Assert.NotEqual(k, LatentCacheKey.For(path, place, false));
    }

    [Fact]
    public void Disk_cache_encodes_once_and_is_reused_by_a_later_run()
    {
        using var tmp = Fixtures.TempDir();
        var path = TrainingTestData.WritePng(tmp.File("a.png"), 80, 64);
        var place = new BucketManager(Resolution.Square(64), 64, 128, 64).Place(80, 64);
        int calls = 0;
        Tensor Encode(RgbImage img)
        {
            calls++;
            Assert.Equal((place.Bucket.Width, place.Bucket.Height), (img.Width, img.Height));
            return img.ToTensor().mean([1], keepdim: true) * 0.18215;
        }
        float first;
        using (var cache = new LatentCache(tmp.File("cache")))
        {
            var t = cache.GetOrEncode(Image(path), place, false, Encode);
            first = t.sum().item<float>();
            cache.GetOrEncode(Image(path), place, false, Encode);
            Assert.Equal((1, 1), (calls, cache.Hits));
            Assert.True(File.Exists(cache.PathFor(LatentCacheKey.For(path, place, false))));
        }
        using (var later = new LatentCache(tmp.File("cache")))
        {
            var t = later.GetOrEncode(Image(path), place, false, Encode);
            Assert.Equal(1, calls);
            Assert.Equal(first, t.sum().item<float>());
            later.GetOrEncode(Image(path), place, true, Encode); // flipped: a different latent
            Assert.Equal(2, calls);
        }
    }

    [Fact]
    public void Memory_only_cache_keeps_latents()
    {
        using var cache = new LatentCache();
        var key = new LatentCacheKey("abc");
        Assert.False(cache.TryGet(key, out _));
        var latent = torch.arange(256, dtype: ScalarType.Float32).reshape(1, 4, 8, 8);
        cache.Put(key, latent);
        Assert.True(cache.TryGet(key, out var t));
        Assert.Equal(latent.data<float>().ToArray(), t.data<float>().ToArray());
        Assert.Equal(new long[] { 1, 4, 8, 8 }, t.shape);
        Assert.False(cache.TryGet(new LatentCacheKey("abd"), out _));
    }
}
