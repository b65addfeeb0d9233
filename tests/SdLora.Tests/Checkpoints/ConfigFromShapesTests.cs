using SdLora.Checkpoints;
using SdLora.IO;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Checkpoints;

/// <summary>
/// Model configs read off an LDM single file's tensor shapes, on hand-made key sets of layouts other than SD1.5's (other
/// channel counts, levels, layers per block, blocks without attention, linear projections, context width), and the
/// refusals when a layout cannot be read.
/// </summary>
public class ConfigFromShapesTests
{
    private const string U = "model.diffusion_model.", V = "first_stage_model.";

    private static DictionaryTensorSource Source(Dictionary<string, long[]> shapes) =>
        new(shapes.ToDictionary(kv => kv.Key, kv => torch.empty(kv.Value)), "test.safetensors");

    /// <summary>Two levels (32 channels with attention, then 64 without), two layers each, a 3-channel in and 5-channel out, context 48.</summary>
    private static Dictionary<string, long[]> TwoLevelUNet() => new()
    {
        [U + "input_blocks.0.0.weight"] = [32, 3, 3, 3],
        [U + "input_blocks.1.0.out_layers.3.weight"] = [32, 32, 3, 3],
        [U + "input_blocks.1.1.proj_in.weight"] = [32, 32, 1, 1],
        [U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = [32, 48],
        [U + "input_blocks.2.0.out_layers.3.weight"] = [32, 32, 3, 3],
        [U + "input_blocks.2.1.proj_in.weight"] = [32, 32, 1, 1],
        [U + "input_blocks.3.0.op.weight"] = [32, 32, 3, 3],
        [U + "input_blocks.4.0.out_layers.3.weight"] = [64, 64, 3, 3],
        [U + "input_blocks.5.0.out_layers.3.weight"] = [64, 64, 3, 3],
        [U + "output_blocks.3.1.proj_in.weight"] = [32, 32, 1, 1],
        [U + "out.2.weight"] = [5, 32, 3, 3],
    };

    private static string Describe(SdLora.Models.UNetConfig c) =>
        $"in {c.InChannels} out {c.OutChannels} channels [{string.Join(",", c.BlockOutChannels!)}] down [{string.Join(",", c.DownBlockTypes!)}] " +
        $"up [{string.Join(",", c.UpBlockTypes!)}] layers {c.LayersPerBlock} context {c.CrossAttentionDim} heads [{string.Join(",", c.AttentionHeadDim!)}] linear {c.UseLinearProjection}";

    [Fact]
    public void A_unet_layout_is_read_from_its_shapes()
    {
        Assert.Equal("in 3 out 5 channels [32,64] down [CrossAttnDownBlock2D,DownBlock2D] up [UpBlock2D,CrossAttnUpBlock2D] " +
                     "layers 2 context 48 heads [8,8] linear False", Describe(ConfigFromShapes.UNet(Source(TwoLevelUNet()))));
    }

    [Fact]
    public void One_level_without_downsampling_counts_its_input_blocks_and_sees_linear_projections()
    {
        var shapes = new Dictionary<string, long[]>
        {
            [U + "input_blocks.0.0.weight"] = [16, 4, 3, 3],
            [U + "input_blocks.1.0.out_layers.3.weight"] = [16, 16, 3, 3],
            [U + "input_blocks.1.1.proj_in.weight"] = [16, 16],
            [U + "input_blocks.2.0.out_layers.3.weight"] = [16, 16, 3, 3],
            [U + "input_blocks.3.0.out_layers.3.weight"] = [16, 16, 3, 3],
            [U + "output_blocks.0.1.proj_in.weight"] = [16, 16],
            [U + "out.2.weight"] = [4, 16, 3, 3],
        };
        // No attn2: the context width is SD1's.
        Assert.Equal("in 4 out 4 channels [16] down [CrossAttnDownBlock2D] up [CrossAttnUpBlock2D] layers 3 context 768 heads [8] linear True",
            Describe(ConfigFromShapes.UNet(Source(shapes))));
    }

    [Fact]
    public void A_unet_layout_that_cannot_be_read_is_refused_naming_the_file_and_the_fix()
    {
        var noConvIn = TwoLevelUNet();
        noConvIn.Remove(U + "input_blocks.0.0.weight");
        Assert.Equal("test.safetensors: has no 'model.diffusion_model.input_blocks.0.0.weight', so its UNet layout cannot be inferred; set config to its LDM YAML",
            Assert.Throws<SdLoraException>(() => ConfigFromShapes.UNet(Source(noConvIn))).Message);

        var downsampleFirst = new Dictionary<string, long[]>
        {
            [U + "input_blocks.0.0.weight"] = [32, 4, 3, 3],
            [U + "input_blocks.1.0.op.weight"] = [32, 32, 3, 3],
            [U + "out.2.weight"] = [4, 32, 3, 3],
        };
        Assert.Equal("test.safetensors: its UNet input blocks do not follow the SD1 layout; set config to its LDM YAML",
            Assert.Throws<SdLoraException>(() => ConfigFromShapes.UNet(Source(downsampleFirst))).Message);
    }

    [Fact]
    public void A_vae_layout_is_read_from_its_shapes()
    {
        var shapes = new Dictionary<string, long[]>
        {
            [V + "encoder.conv_in.weight"] = [32, 3, 3, 3],
            [V + "encoder.down.0.block.0.conv2.weight"] = [32, 32, 3, 3],
            [V + "encoder.down.0.block.1.conv2.weight"] = [32, 32, 3, 3],
            [V + "encoder.down.0.block.2.conv2.weight"] = [32, 32, 3, 3],
            [V + "encoder.down.1.block.0.conv2.weight"] = [48, 48, 3, 3],
            [V + "encoder.down.1.block.1.conv2.weight"] = [48, 48, 3, 3],
            [V + "encoder.down.1.block.2.conv2.weight"] = [48, 48, 3, 3],
            [V + "post_quant_conv.weight"] = [8, 8, 1, 1],
            [V + "decoder.conv_out.weight"] = [1, 32, 3, 3],
        };
        var c = ConfigFromShapes.Vae(Source(shapes));
        Assert.Equal("in 3 out 1 latent 8 channels [32,48] layers 3",
            $"in {c.InChannels} out {c.OutChannels} latent {c.LatentChannels} channels [{string.Join(",", c.BlockOutChannels!)}] layers {c.LayersPerBlock}");

        Assert.Equal("test.safetensors: has no VAE encoder blocks (first_stage_model.encoder.down.*); the file lacks the VAE",
            Assert.Throws<SdLoraException>(() => ConfigFromShapes.Vae(Source(new() { [V + "decoder.conv_out.weight"] = [3, 32, 3, 3] }))).Message);
        shapes.Remove(V + "post_quant_conv.weight");
        Assert.Equal("test.safetensors: has no 'first_stage_model.post_quant_conv.weight', so its VAE layout cannot be inferred; set config to its LDM YAML",
            Assert.Throws<SdLoraException>(() => ConfigFromShapes.Vae(Source(shapes))).Message);
    }

    [Theory]
    [InlineData(128, 2)]
    [InlineData(32, 1)] // narrower than one 64-wide head: one head
    public void A_text_encoder_layout_is_read_from_its_shapes(int width, int heads)
    {
        var shapes = new Dictionary<string, long[]>
        {
            ["text_model.embeddings.token_embedding.weight"] = [1000, width],
            ["text_model.embeddings.position_embedding.weight"] = [64, width],
            ["text_model.encoder.layers.0.mlp.fc1.weight"] = [3 * width, width],
            ["text_model.encoder.layers.1.mlp.fc1.weight"] = [3 * width, width],
            ["text_model.encoder.layers.2.mlp.fc1.weight"] = [3 * width, width],
        };
        var c = ConfigFromShapes.ClipText(Source(shapes));
        Assert.Equal((1000, width, 3 * width, 3, heads, 64), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.MaxPositionEmbeddings));

        shapes.Remove("text_model.embeddings.position_embedding.weight");
        Assert.Equal("test.safetensors: has no text-encoder tensor 'text_model.embeddings.position_embedding.weight'; the file lacks the CLIP text encoder",
            Assert.Throws<SdLoraException>(() => ConfigFromShapes.ClipText(Source(shapes))).Message);
    }
}
