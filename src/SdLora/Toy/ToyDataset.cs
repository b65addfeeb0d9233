using SdLora.Imaging;
using SdLora.IO;

namespace SdLora.Toy;

/// <summary>Pictures of the toy world written as a training folder (<c>0000.png</c>, optional <c>0000.txt</c> captions).</summary>
public static class ToyDataset
{
    /// <summary>
    /// Writes <paramref name="count"/> pictures of <paramref name="concept"/> (or of <paramref name="prompt"/>) into
    /// <paramref name="folder"/>, picture i drawn from seed <paramref name="seed"/> + i. Returns the picture paths.
    /// </summary>
    public static IReadOnlyList<string> Write(string folder, ToyConcept? concept, ToyPrompt? prompt, int count, int seed, string? caption = null,
        int size = ToyWorld.ImageSize)
    {
        if ((concept is null) == (prompt is null)) throw new ArgumentException("give either a concept or a prompt");
        Directory.CreateDirectory(folder);
        var paths = new List<string>();
        for (int i = 0; i < count; i++)
        {
            var rng = new Random(seed + i);
            var scene = concept is not null ? concept.Scene(rng) : prompt!.Scene(rng);
            var path = Path.Combine(folder, $"{i:D4}.png");
            PngFile.Write(path, ToyWorld.Render(scene, size));
            if (caption is not null) AtomicFile.WriteAllText(Path.ChangeExtension(path, ".txt"), caption + "\n");
            paths.Add(path);
        }
        return paths;
    }
}
