using System.Text.Json;
using SdLora.Cli.Commands;
using Xunit;

namespace SdLora.Tests.Text;

public class TokenizeCommandTests
{
    private static JsonElement RunJson(string prompt)
    {
        var output = new StringWriter();
        Assert.Equal(0, TokenizeCommand.Run(prompt, json: true, output));
        return JsonDocument.Parse(output.ToString()).RootElement;
    }

    [Fact]
    public void Json_output_lists_ids_count_and_lora_tags()
    {
        var r = RunJson("a (photo:1.2) of <lora:sks:0.8> sks dog");
        Assert.Equal("5/75", r.GetProperty("count").GetString());
        Assert.Equal(5, r.GetProperty("token_count").GetInt32());
        Assert.Equal(75, r.GetProperty("token_limit").GetInt32());
        var chunk = r.GetProperty("chunks").EnumerateArray().Single();
        Assert.Equal([320, 1125, 539, 48136, 1929], chunk.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal("photo</w>", chunk.GetProperty("tokens")[1].GetString());
        Assert.Equal(1.2, chunk.GetProperty("weights")[1].GetDouble(), 6);
        var lora = r.GetProperty("loras").EnumerateArray().Single();
        Assert.Equal("sks", lora.GetProperty("name").GetString());
        Assert.Equal(0.8, lora.GetProperty("weight").GetDouble());
    }

    [Fact]
    public void Count_spans_chunks_as_a1111_shows_it()
    {
        var r = RunJson(string.Join(" ", Enumerable.Repeat("dog", 80)));
        Assert.Equal("80/150", r.GetProperty("count").GetString());
        Assert.Equal(2, r.GetProperty("chunks").GetArrayLength());
    }

    [Fact]
    public void Text_output_ends_with_the_count()
    {
        var output = new StringWriter();
        TokenizeCommand.Run("a photo of sks dog", json: false, output);
        var lines = output.ToString().TrimEnd().Split('\n');
        Assert.Equal("ids: 320 1125 539 48136 1929", lines[0].TrimEnd());
        Assert.Equal("tokens: 5/75", lines[^1].TrimEnd());
    }
}
