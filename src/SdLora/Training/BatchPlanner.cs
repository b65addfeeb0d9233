namespace SdLora.Training;

/// <summary>One image draw in a batch: the image, where it lands in its bucket, its caption for this draw, and whether it is mirrored.</summary>
public sealed record BatchItem(TrainingImage Image, ImagePlacement Placement, string Caption, bool Flip)
{
    public bool IsRegularization => Image.IsRegularization;
}

/// <summary>Images of one bucket trained together in one forward pass.</summary>
public sealed record Batch(Resolution Bucket, IReadOnlyList<BatchItem> Items);

/// <summary>
/// The order images are trained in, as kohya's DreamBooth dataset: each instance image appears
/// <c>repeats</c> times per epoch; class images are cycled until they match the instance count
/// (prior preservation weights them per sample); batches never mix buckets; both the order inside
/// each bucket and the order of batches are shuffled. Everything derives from (seed, epoch), so
/// a resumed run replays the same order.
/// </summary>
public sealed class BatchPlanner
{
    private readonly List<(TrainingImage Image, int Count)> _draws = [];
    private readonly Dictionary<TrainingImage, ImagePlacement> _placements = [];

    public BucketManager Buckets { get; }
    public int BatchSize { get; }
    public long Seed { get; }
    public CaptionProcessor Captions { get; }
    public bool RandomCrop { get; }
    public bool FlipAugment { get; }
    /// <summary>Draws per epoch per bucket (kohya's bucket summary counts repeats).</summary>
    public IReadOnlyDictionary<Resolution, int> BucketCounts { get; }
    /// <summary>Mean |image aspect - bucket aspect| over images (kohya's mean_img_ar_error).</summary>
    public double MeanAspectError { get; }

    public BatchPlanner(DreamBoothDataset dataset, BucketManager buckets, int batchSize, long seed,
        CaptionProcessor? captions = null, bool randomCrop = false, bool flipAugment = false)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize));
        Buckets = buckets; BatchSize = batchSize; Seed = seed; Captions = captions ?? new CaptionProcessor();
        RandomCrop = randomCrop; FlipAugment = flipAugment;

        foreach (var s in dataset.TrainSubsets)
            foreach (var img in s.Images) _draws.Add((img, s.Repeats));
        BalanceRegularization(dataset);

        double arError = 0;
        foreach (var (img, _) in _draws)
        {
            if (_placements.ContainsKey(img)) continue;
            var p = buckets.Place(img.Width, img.Height);
            _placements[img] = p;
            arError += Math.Abs((double)img.Width / img.Height - (double)p.Bucket.Width / p.Bucket.Height);
        }
        MeanAspectError = _placements.Count == 0 ? 0 : arError / _placements.Count;
        BucketCounts = _draws.GroupBy(d => _placements[d.Image].Bucket).ToDictionary(g => g.Key, g => g.Sum(d => d.Count));
    }

    // kohya: reg images are added with their repeats until they reach the instance count, then one more draw each, round-robin.
    private void BalanceRegularization(DreamBoothDataset dataset)
    {
        int target = dataset.NumTrainImages;
        var reg = dataset.RegSubsets.SelectMany(s => s.Images.Select(i => (Image: i, s.Repeats))).ToList();
        if (reg.Count == 0) return;
        var counts = new int[reg.Count];
        int n = 0;
        for (bool first = true; n < target; first = false)
            for (int i = 0; i < reg.Count && n < target; i++)
            {
                int add = first ? reg[i].Repeats : 1;
                counts[i] += add; n += add;
            }
        for (int i = 0; i < reg.Count; i++) _draws.Add((reg[i].Image, counts[i]));
    }

    /// <summary>Every distinct image with its (centre-crop) placement: what a latent cache must hold.</summary>
    public IEnumerable<(TrainingImage Image, ImagePlacement Placement)> DistinctImages => _placements.Select(kv => (kv.Key, kv.Value));

    public int BatchesPerEpoch => BucketCounts.Values.Sum(n => (n + BatchSize - 1) / BatchSize);

    /// <summary>Optimizer steps per epoch with gradient accumulation (kohya: ceil(batches / accumulation)).</summary>
    public int StepsPerEpoch(int gradientAccumulationSteps) => (BatchesPerEpoch + gradientAccumulationSteps - 1) / gradientAccumulationSteps;

    /// <summary>Total optimizer steps of a run: <c>--max-train-steps</c> if given, else epochs x steps per epoch.</summary>
    public int TotalSteps(TrainingConfig c) => c.MaxTrainSteps ?? c.MaxTrainEpochs * StepsPerEpoch(c.GradientAccumulationSteps);

    /// <summary>Epochs needed to reach <see cref="TotalSteps"/>.</summary>
    public int TotalEpochs(TrainingConfig c)
    {
        int perEpoch = Math.Max(1, StepsPerEpoch(c.GradientAccumulationSteps));
        return c.MaxTrainSteps is { } s ? (s + perEpoch - 1) / perEpoch : c.MaxTrainEpochs;
    }

    /// <summary>The batches of epoch <paramref name="epoch"/> (0-based), a pure function of (seed, epoch).</summary>
    public IReadOnlyList<Batch> Epoch(int epoch)
    {
        var rng = SeededRandom.For(Seed, 0xB47C, epoch);
        var byBucket = new SortedDictionary<(int, int), List<TrainingImage>>();
        foreach (var (img, count) in _draws)
        {
            var b = _placements[img].Bucket;
            if (!byBucket.TryGetValue((b.Width, b.Height), out var list)) byBucket[(b.Width, b.Height)] = list = [];
            for (int i = 0; i < count; i++) list.Add(img);
        }
        var batches = new List<Batch>();
        long drawIndex = 0;
        foreach (var ((w, h), list) in byBucket)
        {
            SeededRandom.Shuffle(list, rng);
            for (int i = 0; i < list.Count; i += BatchSize)
            {
                var items = new List<BatchItem>();
                foreach (var img in list.Skip(i).Take(BatchSize))
                {
                    var drawRng = SeededRandom.For(Seed, 0xD4A, epoch, drawIndex++);
                    var placement = RandomCrop ? Buckets.Place(img.Width, img.Height, drawRng) : _placements[img];
                    bool flip = FlipAugment && drawRng.Next(2) == 1;
                    items.Add(new BatchItem(img, placement, Captions.Process(img.Caption, drawRng, img.IsRegularization), flip));
                }
                batches.Add(new Batch(new Resolution(w, h), items));
            }
        }
        SeededRandom.Shuffle(batches, rng);
        return batches;
    }

    public string BucketSummary() => BucketManager.Summary(BucketCounts);
    public string BucketInfoJson() => BucketManager.BucketInfoJson(BucketCounts, MeanAspectError);
}
