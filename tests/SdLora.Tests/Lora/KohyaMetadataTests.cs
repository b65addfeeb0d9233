using SdLora.IO;
using SdLora.Lora;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Lora;

/// <summary>
/// The ss_* metadata kohya's tools and A1111 read (every value a string written as Python would), and what the kohya
/// writer puts in the file: every tensor in the chosen dtype, in the Python writer's order, with the hashes of exactly that.
/// </summary>
public class KohyaMetadataTests
{
    [Theory]
    [InlineData(1.0, "1.0")]
    [InlineData(0.5, "0.5")]
    [InlineData(-2.0, "-2.0")]
    [InlineData(128.0, "128.0")]
    [InlineData(0.1, "0.1")]
    [InlineData(1.0 / 3, "0.3333333333333333")]
    public void Numbers_are_written_as_python_str_writes_floats(double value, string expected) =>
        Assert.Equal(expected, KohyaMetadata.PyFloat(value));

    [Fact]
    public void Every_lora_carries_kohyas_fields_and_only_the_optional_ones_it_is_given()
    {
        Assert.Equal(new Dictionary<string, string>
        {
            ["ss_network_module"] = "networks.lora",
            ["ss_network_dim"] = "16",
            ["ss_network_alpha"] = "8.0",
            ["ss_base_model_version"] = "sd_v1",
            ["ss_v2"] = "False",
            ["ss_clip_skip"] = "None",
        }, KohyaMetadata.Build(16, 8));

        var full = KohyaMetadata.Build(4, 2, convRank: 2, outputName: "dog", sdModelName: "v1-5.safetensors", clipSkip: 2);
        Assert.Equal("{\"conv_dim\": \"2\", \"conv_alpha\": \"2.0\"}", full["ss_network_args"]); // conv alpha: the network's
        Assert.Equal(("dog", "v1-5.safetensors", "2"), (full["ss_output_name"], full["ss_sd_model_name"], full["ss_clip_skip"]));
        Assert.Equal("{\"conv_dim\": \"8\", \"conv_alpha\": \"0.5\"}", KohyaMetadata.Build(4, 1, convRank: 8, convAlpha: 0.5)["ss_network_args"]);
    }

    [Theory]
    [InlineData(ScalarType.Float16, "F16")]
    [InlineData(ScalarType.BFloat16, "BF16")]
    [InlineData(ScalarType.Float32, "F32")]
    public void The_writer_stores_every_tensor_in_the_chosen_dtype_with_the_hashes_of_what_it_wrote(ScalarType dtype, string code)
    {
        using var dir = Fixtures.TempDir();
        var path = dir.File("x.safetensors");
        var down = torch.tensor(new float[] { 0.5f, -1, 2, 0.25f }).reshape(2, 2);
        var up = torch.tensor(new float[] { 1, 2, 3, 4, 5, 6 }).reshape(3, 2);
        var tensors = KohyaLoraWriter.ModuleTensors("lora_unet_a_to_q", down, up, 4).ToList();

        var written = KohyaLoraWriter.Save(path, tensors, new Dictionary<string, string> { ["ss_network_dim"] = "2", ["note"] = "kept" }, dtype);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(["lora_unet_a_to_q.alpha", "lora_unet_a_to_q.lora_down.weight", "lora_unet_a_to_q.lora_up.weight"], file.Keys.Order(StringComparer.Ordinal));
        Assert.All(file.Keys, k => Assert.Equal(code, file[k].DType));
        Assert.Equal(4f, file.Load("lora_unet_a_to_q.alpha", ScalarType.Float32).item<float>());
        Assert.Empty(file["lora_unet_a_to_q.alpha"].Shape);
        Assert.Equal([0.5f, -1, 2, 0.25f], file.Load("lora_unet_a_to_q.lora_down.weight", ScalarType.Float32).flatten().data<float>().ToArray());
        Assert.Equal(written, new Dictionary<string, string>(file.Metadata));
        Assert.Equal("kept", written["note"]);
        var converted = tensors.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.to(dtype))).ToList();
        var (model, legacy) = KohyaHashes.Compute(converted, new Dictionary<string, string> { ["ss_network_dim"] = "2" });
        Assert.Equal((model, legacy), (written["sshs_model_hash"], written["sshs_legacy_hash"]));
    }

    [Fact]
    public void The_writer_refuses_a_dtype_no_lora_file_uses() =>
        Assert.Throws<ArgumentException>(() => KohyaLoraWriter.Save("unused.safetensors", [], new Dictionary<string, string>(), ScalarType.Int32));
}
