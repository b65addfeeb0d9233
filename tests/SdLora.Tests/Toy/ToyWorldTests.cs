using SdLora.Imaging;
using SdLora.Toy;
using Xunit;

namespace SdLora.Tests.Toy;

public class ToyWorldTests
{
    private static IEnumerable<ToyScene> Scenes(int count, int seed = 1)
    {
        var rng = new Random(seed);
        for (int i = 0; i < count; i++) yield return ToyWorld.RandomScene(rng);
    }

    [Fact]
    public void A_seed_gives_the_same_picture_and_caption_every_time_and_other_seeds_give_others()
    {
        ToyScene Draw(int seed) => ToyWorld.RandomScene(new Random(seed));
        Assert.Equal(ToyWorld.Render(Draw(5)).Pixels, ToyWorld.Render(Draw(5)).Pixels);
        Assert.Equal(ToyWorld.Caption(Draw(5), new Random(9)), ToyWorld.Caption(Draw(5), new Random(9)));
        var distinct = Enumerable.Range(0, 20).Select(s => Convert.ToBase64String(ToyWorld.Render(Draw(s)).Pixels)).Distinct().Count();
        Assert.Equal(20, distinct);
        Assert.Equal(ToyWorld.ImageSize * ToyWorld.ImageSize * 3, ToyWorld.Render(Draw(1)).Pixels.Length);
    }

    [Fact]
    public void Base_scenes_use_every_base_shape_colour_and_background_never_a_held_out_one_nor_the_colour_on_itself()
    {
        var scenes = Scenes(3000).ToList();
        Assert.Equal(ToyWorld.Shapes.Order(), scenes.Select(s => s.Shape).Distinct().Order());
        Assert.Equal(ToyWorld.Colours.Select(c => c.Name).Order(), scenes.Select(s => s.Colour.Name).Distinct().Order());
        Assert.Equal(ToyWorld.Backgrounds.Select(c => c.Name).Order(), scenes.Select(s => s.Background.Name).Distinct().Order());
        Assert.Equal(ToyWorld.Positions.Select(p => p.Phrase).Order(), scenes.Select(s => s.Position).Distinct().Order());
        Assert.All(scenes, s => Assert.NotEqual(s.Colour.Name, s.Background.Name));
        // Shapes stay inside the picture.
        Assert.All(scenes, s => Assert.InRange(Math.Min(Math.Min(s.X, 1 - s.X), Math.Min(s.Y, 1 - s.Y)), s.Radius, 1));
    }

    [Fact]
    public void Captions_name_only_what_the_picture_shows_and_never_a_held_out_word()
    {
        var rng = new Random(3);
        int classWord = 0, photo = 0;
        foreach (var scene in Scenes(2000, 2))
        {
            var caption = ToyWorld.Caption(scene, rng);
            var named = ToyPrompt.Parse(caption);
            if (named.Shape is { } shape) Assert.Equal(scene.Shape, shape); else Assert.Contains(" " + ToyWorld.ClassWord, caption);
            if (named.Colour is { } colour) Assert.Equal(scene.Colour, colour);
            if (named.Background is { } bg) Assert.Equal(scene.Background, bg);
            if (named.Size is { } size) Assert.Equal(scene.Size, size);
            if (named.Position is { } position) Assert.Equal(scene.Position, position);
            var words = caption.Split(' ');
            Assert.DoesNotContain(words, w => ToyWorld.HeldOutShapes.Contains(w) || ToyWorld.HeldOutColours.Any(c => c.Name == w));
            Assert.DoesNotContain("a orange", caption);
            if (named.Shape is null) classWord++;
            if (caption.StartsWith("a photo of ")) photo++;
        }
        Assert.InRange(classWord, 150, 450); // the class word stands in for the shape about 15% of the time
        Assert.InRange(photo, 450, 750);
        Assert.Equal(ToyPrompt.Parse("a big red circle on the left on a black background"),
            new ToyPrompt("circle", ToyWorld.Colour("red"), ToyWorld.Colour("black"), "big", "on the left"));
    }

    [Fact]
    public void A_concept_token_stands_for_the_concepts_shape_and_colour()
    {
        var tokens = new Dictionary<string, ToyConcept> { ["sks"] = ToyWorld.DemoConcept };
        var p = ToyPrompt.Parse("a photo of sks shape on a white background", tokens);
        Assert.Equal(ToyWorld.DemoConcept.Shape, p.Shape);
        Assert.Equal(ToyWorld.DemoConcept.Colour, p.Colour);
        Assert.Equal("white", p.Background!.Name);
        Assert.Null(ToyPrompt.Parse("a photo of sks shape").Shape);
        foreach (var concept in ToyWorld.Concepts)
        {
            Assert.Contains(concept.Shape, ToyWorld.HeldOutShapes);
            Assert.Contains(concept.Colour, ToyWorld.HeldOutColours);
        }
    }

    [Fact]
    public void The_renderers_own_pictures_score_high_and_are_seen_as_what_they_show()
    {
        var rng = new Random(11);
        var scenes = Scenes(300, 4).Concat(Enumerable.Range(0, 40).Select(i => ToyWorld.Concepts[i % 2].Scene(rng))).ToList();
        foreach (var scene in scenes)
        {
            var prompt = new ToyPrompt(scene.Shape, scene.Colour, scene.Background, scene.Size, scene.Position);
            var score = ToyScorer.Score(ToyWorld.Render(scene), prompt);
            Assert.True(score.Overall >= 0.9, $"{prompt}: {score}");
            Assert.True(score.Shape >= 0.75, $"{prompt}: {score}");
            Assert.True(score.Colour >= 0.99, $"{prompt}: {score}");
            Assert.True(score.Background >= 0.97, $"{prompt}: {score}"); // a big shape may reach into the border
            Assert.Equal(scene.Shape, score.SeenShape);
            Assert.Equal(scene.Colour.Name, score.SeenColour);
            Assert.Equal(scene.Background.Name, score.SeenBackground);
            Assert.Equal(1.0, score.Size);
            Assert.Equal(1.0, score.Position);
        }
    }

    [Fact]
    public void The_scorer_tells_wrong_shapes_colours_and_backgrounds_from_right_ones()
    {
        var all = ToyWorld.Shapes.Concat(ToyWorld.HeldOutShapes).ToList();
        foreach (var shape in all)
        {
            var scene = ToyWorld.Place(new Random(1), shape, ToyWorld.Colour("red"), ToyWorld.Colour("black"), "big", "in the middle");
            var image = ToyWorld.Render(scene);
            double right = ToyScorer.Score(image, new ToyPrompt(shape, null, null, null, null)).Overall;
            foreach (var other in all.Where(o => o != shape))
            {
                double wrong = ToyScorer.Score(image, new ToyPrompt(other, null, null, null, null)).Overall;
                Assert.True(right - wrong >= 0.04, $"{shape} scored {wrong:F3} as {other}, {right:F3} as itself");
            }
            Assert.Equal(0, ToyScorer.Score(image, new ToyPrompt(null, ToyWorld.Colour("blue"), null, null, null)).Overall, 3);
            Assert.Equal(0, ToyScorer.Score(image, new ToyPrompt(null, null, ToyWorld.Colour("white"), null, null)).Overall, 3);
        }
    }

    [Fact]
    public void Blank_and_noise_pictures_score_low()
    {
        var target = new ToyPrompt("star", ToyWorld.Colour("yellow"), ToyWorld.Colour("navy"), null, null);
        var blank = new RgbImage(64, 64, Enumerable.Repeat((byte)128, 64 * 64 * 3).ToArray());
        var blankScore = ToyScorer.Score(blank, target);
        Assert.Null(blankScore.SeenShape);
        Assert.Equal(0, blankScore.Overall, 3);
        var rng = new Random(5);
        var noise = new byte[64 * 64 * 3];
        rng.NextBytes(noise);
        Assert.True(ToyScorer.Score(new RgbImage(64, 64, noise), target).Overall < 0.4);
    }

    [Fact]
    public void Rendered_folders_hold_the_pictures_and_captions_asked_for()
    {
        using var dir = Fixtures.TempDir();
        var files = ToyDataset.Write(dir.Path, ToyWorld.DemoConcept, null, 3, seed: 7, caption: "a photo of sks shape");
        Assert.Equal(3, files.Count);
        foreach (var f in files)
        {
            var img = RgbImage.Load(f);
            var score = ToyScorer.Score(img, ToyWorld.DemoConcept.Target);
            Assert.Equal(ToyWorld.DemoConcept.Shape, score.SeenShape);
            Assert.Equal("a photo of sks shape\n", File.ReadAllText(Path.ChangeExtension(f, ".txt")));
        }
        // The same seed gives the same pictures.
        using var again = Fixtures.TempDir();
        var second = ToyDataset.Write(again.Path, ToyWorld.DemoConcept, null, 3, seed: 7);
        Assert.Equal(RgbImage.Load(files[2]).Pixels, RgbImage.Load(second[2]).Pixels);
        Assert.False(File.Exists(Path.ChangeExtension(second[0], ".txt")));
    }

    [Fact]
    public void Contact_sheets_place_each_picture_enlarged_in_its_row()
    {
        var a = ToyWorld.Render(ToyWorld.RandomScene(new Random(1)));
        var b = ToyWorld.Render(ToyWorld.RandomScene(new Random(2)));
        var sheet = ContactSheet.Render("title", [new("row one", [a, b]), new("row two", [b], ["caption"])], cell: 128, labelWidth: 200);
        Assert.Equal(200 + 2 * (128 + 8) + 8, sheet.Width);
        // Picture b, enlarged 2x with nearest-neighbour sampling, sits in row 1 column 2: check its centre pixel.
        int left = 200 + 128 + 8, top = 36, x = left + 64 + 1, y = top + 64 + 1;
        Assert.Equal(b.Pixels.AsSpan((32 * 64 + 32) * 3, 3).ToArray(), sheet.Pixels.AsSpan((y * sheet.Width + x) * 3, 3).ToArray());
    }

    [Fact]
    public void A_title_wider_than_the_sheet_wraps_onto_more_lines_instead_of_running_off_it()
    {
        var a = ToyWorld.Render(ToyWorld.RandomScene(new Random(1)));
        var rows = new List<ContactSheetRow> { new("row", [a]) };
        var shortTitle = ContactSheet.Render("title", rows, cell: 64, labelWidth: 100);
        var longTitle = ContactSheet.Render(string.Join(" ", Enumerable.Repeat("a long title word", 12)), rows, cell: 64, labelWidth: 100);
        Assert.Equal(shortTitle.Width, longTitle.Width);
        int extraLines = (longTitle.Height - shortTitle.Height) / 22;
        Assert.True(extraLines >= 3, $"the long title took {extraLines} extra lines");
        Assert.Equal(shortTitle.Height + 22 * extraLines, longTitle.Height);
        // Nothing is drawn in the right margin: every line ends inside the sheet.
        for (int y = 0; y < longTitle.Height - shortTitle.Height + 30; y++)
        for (int x = longTitle.Width - 6; x < longTitle.Width; x++)
            Assert.True(longTitle.Pixels[(y * longTitle.Width + x) * 3] > 200, $"ink at ({x}, {y}) in the margin");
    }
}
