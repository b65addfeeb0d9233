using SdLora.Captioning;

namespace SdLora.Benchmarks;

/// <summary>
/// Multiply-add work (2 FLOPs per MAC) of captioning one image with BLIP, counted analytically: the ViT image encoder
/// (patch embedding, per layer q/k/v/out, MLP and both attention matmuls) plus the text decoder for each generated
/// token with its key/value cache (self- and cross-attention projections, feed-forward, LM head; the cross-attention
/// keys/values of the image once). Norms, softmax and activations are left out.
/// </summary>
public static class BlipFlops
{
    public static double VisionForward(BlipVisionConfig v)
    {
        double n = v.NumPositions, d = v.HiddenSize;
        double patch = 2.0 * v.NumPatches * 3 * v.PatchSize * v.PatchSize * d;
        double layer = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * v.IntermediateSize + 2 * 2 * n * n * d;
        return patch + v.NumHiddenLayers * layer;
    }

    /// <summary>Decoder work for <paramref name="tokens"/> positions (prompt + generated), one caption.</summary>
    public static double TextDecode(BlipTextConfig t, int imageTokens, int tokens)
    {
        double d = t.HiddenSize, e = t.EncoderHiddenSize;
        double perToken = t.NumHiddenLayers * (4 * 2 * d * d + 2 * 2 * d * d + 2 * 2 * d * t.IntermediateSize) + 2 * d * t.VocabSize;
        double crossKv = t.NumHiddenLayers * 2 * 2.0 * imageTokens * e * d;
        // Attention matmuls: each position attends to the positions before it and to every image token.
        double attention = t.NumHiddenLayers * Enumerable.Range(1, tokens).Sum(p => 2 * 2.0 * d * (p + imageTokens));
        return tokens * perToken + crossKv + attention;
    }

    public static double Caption(BlipConfig config, int tokens) =>
        VisionForward(config.Vision) + TextDecode(config.Text, config.Vision.NumPositions, tokens);
}
