using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Captioning;

/// <summary>
/// BLIP image captioning (transformers' <c>BlipForConditionalGeneration</c>): the ViT image encoder
/// (<c>vision_model</c>) and the caption decoder (<c>text_decoder</c>). Registered names equal the
/// Hugging Face <c>model.safetensors</c> keys.
/// </summary>
public sealed class BlipForConditionalGeneration : nn.Module
{
    public BlipVisionModel vision_model;
    public BlipTextDecoder text_decoder;

    public BlipConfig Config { get; }

    public BlipForConditionalGeneration(BlipConfig config) : base(nameof(BlipForConditionalGeneration))
    {
        if (config.Text.EncoderHiddenSize != config.Vision.HiddenSize)
            config = config with { Text = config.Text with { EncoderHiddenSize = config.Vision.HiddenSize } };
        Config = config;
        vision_model = new BlipVisionModel(config.Vision);
        text_decoder = new BlipTextDecoder(config.Text);
        RegisterComponents();
    }

    /// <summary>pixel_values [B,3,S,S] -> image embeddings [B, 1 + patches, vision hidden].</summary>
    public Tensor EncodeImage(Tensor pixelValues) => vision_model.forward(pixelValues);

    /// <summary>Teacher-forced decoder logits [B,T,vocab] (input_ids start with the bos token [DEC]).</summary>
    public Tensor Logits(Tensor pixelValues, Tensor inputIds, Tensor? attentionMask = null)
    {
        using var scope = torch.NewDisposeScope();
        var image = EncodeImage(pixelValues);
        return text_decoder.Forward(inputIds, image, attentionMask).MoveToOuterDisposeScope();
    }
}
