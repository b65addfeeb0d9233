using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class BucketNoUpscaleTests
{
    /// <summary>
    /// kohya's bucket_no_upscale, worked by hand: an image over the area is shrunk to it keeping its aspect ratio,
    /// and either the width or the height is rounded to the step — whichever keeps the aspect ratio closer — then
    /// both sides are floored to the step. The first rows are images where the two roundings give different
    /// buckets, so picking the worse one fails; the last rows are small images that keep their own size (floored).
    /// </summary>
    [Theory]
    [InlineData(520, 561, 448, 512)] // width-rounding: 448x512 (ar 0.875 vs 0.927), height-rounding would give 448x448
    [InlineData(520, 602, 448, 512)]
    [InlineData(520, 684, 384, 576)]
    [InlineData(520, 725, 384, 512)]
    [InlineData(1000, 600, 640, 384)]
    [InlineData(4000, 3000, 512, 384)]
    [InlineData(700, 5000, 192, 1344)]
    [InlineData(300, 200, 256, 192)]
    [InlineData(500, 500, 448, 448)]
    [InlineData(40, 30, 64, 64)]
    public void No_upscale_bucket_follows_kohya(int width, int height, int bucketWidth, int bucketHeight)
    {
        var buckets = new BucketManager(Resolution.Square(512), step: 64, noUpscale: true);
        Assert.Equal(new Resolution(bucketWidth, bucketHeight), buckets.SelectBucket(width, height));
    }
}
