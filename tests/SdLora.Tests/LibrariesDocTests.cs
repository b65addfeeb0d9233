using System.Text.RegularExpressions;
using Xunit;

namespace SdLora.Tests;

/// <summary>docs/libraries.md and the code agree on which hand-written pieces are kept on purpose.</summary>
public class LibrariesDocTests
{
    [Fact]
    public void Every_piece_the_libraries_doc_keeps_says_why_at_its_top()
    {
        var doc = File.ReadAllLines(Path.Combine(Fixtures.RepoRoot, "docs", "libraries.md"));
        // Rows of the "replaced, kept" table whose decision cell says kept: their first cell names the files.
        var kept = doc.Select(l => l.Split('|'))
            .Where(cells => cells.Length > 3 && cells[2].Contains("kept", StringComparison.Ordinal))
            .SelectMany(cells => Regex.Matches(cells[1], @"`([\w/]+\.cs)`").Select(m => m.Groups[1].Value))
            .ToList();
        Assert.True(kept.Count >= 8, $"expected the kept pieces in docs/libraries.md, found {kept.Count}");
        foreach (var relative in kept)
        {
            var path = Path.Combine(Fixtures.RepoRoot, "src", "SdLora", relative);
            Assert.True(File.Exists(path), $"docs/libraries.md names {relative}, which is not in src/SdLora");
            var top = File.ReadLines(path).TakeWhile(l => !l.StartsWith("///", StringComparison.Ordinal) && !l.StartsWith("namespace", StringComparison.Ordinal));
            Assert.True(top.Any(l => l.StartsWith("// Why we keep this", StringComparison.Ordinal)), $"{relative} is kept in docs/libraries.md but has no '// Why we keep this' line at its top");
        }
    }
}
