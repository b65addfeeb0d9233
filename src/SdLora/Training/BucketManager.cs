using System.Text;
using System.Text.Json;
using SdLora.Imaging;

namespace SdLora.Training;

/// <summary>Where one image lands: its bucket, the size it is resized to (covering the bucket) and the crop offset.</summary>
public readonly record struct ImagePlacement(Resolution Bucket, int ResizedWidth, int ResizedHeight, int CropX, int CropY)
{
    /// <summary>Resize, crop (and optionally mirror) an image into its bucket.</summary>
    public RgbImage Apply(RgbImage image, bool flip = false)
    {
        var resized = ImageOps.Resize(image, ResizedWidth, ResizedHeight);
        var cropped = ImageOps.Crop(resized, CropX, CropY, Bucket.Width, Bucket.Height);
        return flip ? ImageOps.FlipHorizontal(cropped) : cropped;
    }
}

/// <summary>
/// kohya-style aspect-ratio buckets: a fixed set of resolutions with about the training area, sides
/// between min and max in steps of 64; each image goes to the bucket whose aspect ratio is nearest,
/// is resized to cover it and cropped (centre, or random with <c>--random-crop</c>). With buckets off
/// there is one bucket, the training resolution.
/// </summary>
public sealed class BucketManager
{
    public Resolution MaxResolution { get; }
    public int Step { get; }
    public bool NoUpscale { get; }
    /// <summary>The predefined buckets, sorted (empty in no-upscale mode, where buckets follow the images).</summary>
    public IReadOnlyList<Resolution> Resolutions { get; }

    public BucketManager(Resolution maxResolution, int minSize = 256, int maxSize = 1024, int step = 64, bool enabled = true, bool noUpscale = false)
    {
        MaxResolution = maxResolution; Step = step; NoUpscale = enabled && noUpscale;
        Resolutions = !enabled ? [maxResolution] : NoUpscale ? [] : MakeBucketResolutions(maxResolution, minSize, maxSize, step);
    }

    public static BucketManager FromConfig(TrainingConfig c) =>
        new(c.Resolution, c.EffectiveMinBucketReso, c.EffectiveMaxBucketReso, c.BucketResoSteps, c.EnableBucket, c.BucketNoUpscale);

    /// <summary>
    /// The bucket set, as kohya's make_bucket_resolutions: the square of the same area, plus for every width
    /// from min to max (step) the tallest height (multiple of step, at most max) within the area, both ways round.
    /// </summary>
    public static List<Resolution> MakeBucketResolutions(Resolution maxReso, int minSize = 256, int maxSize = 1024, int divisible = 64)
    {
        long maxArea = maxReso.Area;
        var set = new HashSet<Resolution>();
        int square = (int)(Math.Sqrt(maxArea) / divisible) * divisible;
        set.Add(new Resolution(square, square));
        for (int width = minSize; width <= maxSize; width += divisible)
        {
            int height = (int)Math.Min(maxSize, maxArea / width / divisible * divisible);
            if (height >= minSize)
            {
                set.Add(new Resolution(width, height));
                set.Add(new Resolution(height, width));
            }
        }
        return set.OrderBy(r => r.Width).ThenBy(r => r.Height).ToList();
    }

    /// <summary>The bucket for an image of the given upright size.</summary>
    public Resolution SelectBucket(int width, int height)
    {
        if (NoUpscale) return NoUpscaleBucket(width, height);
        double ar = (double)width / height;
        return Resolutions.MinBy(r => Math.Abs((double)r.Width / r.Height - ar));
    }

    // kohya's bucket_no_upscale: keep small images at their own size (rounded down to the step); shrink large ones to the area.
    private Resolution NoUpscaleBucket(int width, int height)
    {
        double ar = (double)width / height;
        int rw = width, rh = height;
        if ((long)width * height > MaxResolution.Area)
        {
            double w = Math.Sqrt(MaxResolution.Area * ar), h = MaxResolution.Area / w;
            int wr = RoundToStep(w), hInW = RoundToStep(wr / ar);
            int hr = RoundToStep(h), wInH = RoundToStep(hr * ar);
            double errW = Math.Abs((double)wr / hInW - ar), errH = Math.Abs((double)wInH / hr - ar);
            (rw, rh) = errW < errH ? (wr, (int)(wr / ar + 0.5)) : ((int)(hr * ar + 0.5), hr);
        }
        return new Resolution(Math.Max(Step, rw - rw % Step), Math.Max(Step, rh - rh % Step));
    }

    private int RoundToStep(double x)
    {
        int v = (int)(x + 0.5);
        return v - v % Step;
    }

    /// <summary>Bucket, cover-resize and crop for an image; centre crop unless <paramref name="randomCrop"/> is given.</summary>
    public ImagePlacement Place(int width, int height, Random? randomCrop = null)
    {
        var b = SelectBucket(width, height);
        double arImage = (double)width / height, arBucket = (double)b.Width / b.Height;
        double scale = arImage > arBucket ? (double)b.Height / height : (double)b.Width / width;
        int rw = Math.Max(b.Width, (int)(width * scale + 0.5)), rh = Math.Max(b.Height, (int)(height * scale + 0.5));
        int cx = rw - b.Width, cy = rh - b.Height;
        return randomCrop is null
            ? new ImagePlacement(b, rw, rh, cx / 2, cy / 2)
            : new ImagePlacement(b, rw, rh, randomCrop.Next(cx + 1), randomCrop.Next(cy + 1));
    }

    /// <summary>"bucket 512x512: 50" lines, as printed at the start of a run.</summary>
    public static string Summary(IReadOnlyDictionary<Resolution, int> counts)
    {
        var sb = new StringBuilder($"{counts.Count} bucket(s):");
        foreach (var (r, n) in counts.OrderBy(kv => kv.Key.Width).ThenBy(kv => kv.Key.Height))
            sb.Append($"\n  {r.Width}x{r.Height}: {n}");
        return sb.ToString();
    }

    /// <summary>kohya's <c>ss_bucket_info</c> JSON.</summary>
    public static string BucketInfoJson(IReadOnlyDictionary<Resolution, int> counts, double meanAspectError)
    {
        var buckets = counts.OrderBy(kv => kv.Key.Width).ThenBy(kv => kv.Key.Height)
            .Select((kv, i) => (i, kv)).ToDictionary(x => x.i.ToString(), x => new { resolution = new[] { x.kv.Key.Width, x.kv.Key.Height }, count = x.kv.Value });
        return JsonSerializer.Serialize(new { buckets, mean_img_ar_error = meanAspectError });
    }
}
