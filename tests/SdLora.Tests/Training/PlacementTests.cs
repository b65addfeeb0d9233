using SdLora.Imaging;
using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

public class PlacementTests
{
    /// <summary>A 128x64 image where every pixel is distinct: R = column, G = row, B = column + row.</summary>
    private static RgbImage Ramp(int width, int height)
    {
        var px = new byte[width * height * 3];
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                int i = (y * width + x) * 3;
                px[i] = (byte)x; px[i + 1] = (byte)y; px[i + 2] = (byte)(x + y);
            }
        return new RgbImage(width, height, px);
    }

    private static (byte R, byte G, byte B) At(RgbImage img, int x, int y)
    {
        int i = (y * img.Width + x) * 3;
        return (img.Pixels[i], img.Pixels[i + 1], img.Pixels[i + 2]);
    }

    [Fact]
    public void Centre_crop_takes_the_middle_and_flip_mirrors_it_pixel_for_pixel()
    {
        var img = Ramp(128, 64);
        // One 64x64 bucket: the image already covers it at scale 1, so the crop is the middle 64 columns (32..95).
        var place = new BucketManager(Resolution.Square(64), enabled: false).Place(img.Width, img.Height);
        Assert.Equal(new ImagePlacement(Resolution.Square(64), 128, 64, 32, 0), place);

        var plain = place.Apply(img);
        var flipped = place.Apply(img, flip: true);
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 64; x++)
            {
                Assert.Equal(At(img, 32 + x, y), At(plain, x, y));
                Assert.Equal(At(img, 32 + 63 - x, y), At(flipped, x, y));
            }
    }
}
