using SdLora.Imaging;
using Xunit;

namespace SdLora.Tests;

public class ImageTests
{
    [Fact]
    public void Loads_bundled_dreambooth_jpeg_as_rgb()
    {
        var img = RgbImage.Load(Path.Combine(Fixtures.RepoRoot, "assets", "dreambooth", "dog", "00.jpg"));
        Assert.True(img.Width > 100 && img.Height > 100);
        Assert.Equal(img.Width * img.Height * 3, img.Pixels.Length);
    }

    [Fact]
    public void Corrupt_image_is_a_clear_error()
    {
        using var tmp = Fixtures.TempDir();
        var p = tmp.File("bad.jpg");
        File.WriteAllBytes(p, [0xFF, 0xD8, 1, 2, 3]);
        var ex = Assert.Throws<SdLoraException>(() => RgbImage.Load(p));
        Assert.Contains(p, ex.Message);
    }
}
