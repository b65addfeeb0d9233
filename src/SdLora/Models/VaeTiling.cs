using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// Tiled VAE decode and encode: the latent (or image) is cut into overlapping tiles that go through the VAE one at a
/// time, and the tiles are blended with linear ramps across each overlap, so a 1024x1024 image needs the activation
/// memory of one 512x512 tile instead of the whole picture. A latent that fits in one tile is decoded untiled, bit for bit.
/// <para>
/// Decoding runs the latent-resolution part (conv_in, the mid block with its attention over all positions) on the
/// whole latent, which is small; only the upsampling path, where the memory is, runs per tile. Each tile's GroupNorms
/// normalise with that tile's own statistics, as diffusers' and A1111's tiled VAEs do, so a tiled image differs
/// slightly from the untiled one (mostly as gentle colour shifts between tiles, which the blending smooths). Exact
/// whole-picture statistics would need every tile's activations held at once, which is the memory tiling saves.
/// </para>
/// </summary>
/// <param name="TileLatent">Tile edge in latent pixels (64 = a 512x512 image tile).</param>
/// <param name="OverlapLatent">Overlap between neighbouring tiles in latent pixels, blended with a linear ramp.</param>
public sealed record VaeTiling(int TileLatent = 64, int OverlapLatent = 16)
{
    /// <summary>The default tiles: 512x512 pixels with 128 pixels of overlap.</summary>
    public static VaeTiling Default { get; } = new();

    /// <summary>
    /// Whether a latent of this size should be tiled when the caller asked for "auto": above 96x96 latents (768x768
    /// pixels) the untiled decoder's activations pass ~2 GiB in fp32.
    /// </summary>
    public static bool AutoTiles(long latentHeight, long latentWidth) => latentHeight * latentWidth > 96 * 96;

    public void Validate()
    {
        if (TileLatent < 8) throw new SdLoraException($"VAE tile size {TileLatent} latent pixels is too small: use at least 8 (64 image pixels)");
        if (OverlapLatent < 0 || OverlapLatent >= TileLatent)
            throw new SdLoraException($"VAE tile overlap {OverlapLatent} must be at least 0 and smaller than the tile ({TileLatent})");
    }

    /// <summary>Tile starts along one axis of <paramref name="length"/>: stride tile - overlap, the last tile flush with the end.</summary>
    public static IReadOnlyList<long> Starts(long length, long tile, long overlap)
    {
        if (length <= tile) return [0];
        long stride = Math.Max(1, tile - overlap);
        var starts = new List<long>();
        for (long s = 0; s + tile < length; s += stride) starts.Add(s);
        starts.Add(length - tile);
        return starts;
    }

    /// <summary>
    /// Decodes <paramref name="latents"/> (already divided by the scaling factor) tile by tile; returns what
    /// <see cref="AutoencoderKL.Decode(Tensor)"/> returns for the whole latent.
    /// </summary>
    public Tensor Decode(AutoencoderKL vae, Tensor latents)
    {
        Validate();
        long h = latents.shape[2], w = latents.shape[3];
        if (h <= TileLatent && w <= TileLatent) return vae.Decode(latents);
        // The latent-resolution part (conv_in and the mid block with its attention over all positions) is small even
        // at 1024x1024 and runs on the whole latent: only the upsampling path, where the memory is, runs per tile.
        var d = vae.decoder;
        var x = d.conv_in.call(vae.post_quant_conv.call(latents));
        x = Intermediate.Step(x, latents, d.mid_block.call);
        var upscale = 1 << (d.up_blocks.Count - 1);
        Tensor UpPath(Tensor tile)
        {
            var t = tile;
            foreach (var block in d.up_blocks) t = Intermediate.Step(t, tile, block.call);
            t = Intermediate.Step(t, tile, d.conv_norm_out.call);
            return Intermediate.Step(t, tile, u => d.conv_out.call(Intermediate.Silu(u)));
        }
        var image = Blend(x, TileLatent, OverlapLatent, up: upscale, down: 1, UpPath);
        x.Dispose();
        return image;
    }

    /// <summary>
    /// Encodes <paramref name="image"/> ([B, 3, H, W] in [-1, 1]) tile by tile (tiles of the VAE's downsampling factor x <see cref="TileLatent"/>
    /// pixels); the posterior moments are blended in latent space.
    /// </summary>
    public DiagonalGaussianDistribution Encode(AutoencoderKL vae, Tensor image)
    {
        Validate();
        long h = image.shape[2], w = image.shape[3];
        int f = vae.Config.DownsampleFactor, tile = TileLatent * f, overlap = OverlapLatent * f;
        if (h <= tile && w <= tile) return vae.Encode(image);
        if (h % f != 0 || w % f != 0) throw new SdLoraException($"tiled VAE encode needs an image size that is a multiple of {f} (got {w}x{h})");
        var moments = Blend(image, tile, overlap, up: 1, down: f, t => vae.Encode(t).Moments);
        return new DiagonalGaussianDistribution(moments);
    }

    /// <summary>
    /// Runs <paramref name="run"/> on overlapping tiles of <paramref name="input"/> (size and overlap in input pixels)
    /// and blends the outputs, which are <paramref name="up"/> times larger (decoding) or <paramref name="down"/> times
    /// smaller (encoding) than their tiles.
    /// </summary>
    private static Tensor Blend(Tensor input, int tile, int overlap, int up, int down, Func<Tensor, Tensor> run)
    {
        long b = input.shape[0], h = input.shape[2], w = input.shape[3];
        long Out(long n) => n * up / down;
        // Tiles start on the coarser of the two grids, so that every tile covers whole output pixels.
        var ys = Starts(h / down, tile / down, overlap / down).Select(s => s * down).ToList();
        var xs = Starts(w / down, tile / down, overlap / down).Select(s => s * down).ToList();
        Tensor? sum = null, weight = null;
        foreach (var y in ys)
            foreach (var x in xs)
            {
                using var scope = torch.NewDisposeScope();
                long th = Math.Min(tile, h), tw = Math.Min(tile, w);
                var output = run(Window(input, y, th, x, tw)).to(ScalarType.Float32);
                sum ??= torch.zeros([b, output.shape[1], Out(h), Out(w)], ScalarType.Float32, output.device).DetachFromDisposeScope();
                weight ??= torch.zeros([1, 1, Out(h), Out(w)], ScalarType.Float32, output.device).DetachFromDisposeScope();
                var ramp = Ramp(Out(th), Out(tw), Out(overlap), y > 0, y + th < h, x > 0, x + tw < w, output.device);
                Window(sum, Out(y), Out(th), Out(x), Out(tw)).add_(output * ramp);
                Window(weight, Out(y), Out(th), Out(x), Out(tw)).add_(ramp);
            }
        var result = sum!.div_(weight!).to(input.dtype);
        if (!ReferenceEquals(result, sum)) sum.Dispose();
        weight!.Dispose();
        return result;
    }

    /// <summary>The view [.., .., y..y+h, x..x+w] of an NCHW tensor.</summary>
    private static Tensor Window(Tensor t, long y, long h, long x, long w) => t.narrow(2, y, h).narrow(3, x, w);

    /// <summary>
    /// A tile's blending weight [1, 1, h, w]: 1 inside, rising linearly over <paramref name="ramp"/> pixels along each
    /// edge that borders another tile (never 0, so every pixel keeps a weight).
    /// </summary>
    public static Tensor Ramp(long h, long w, long ramp, bool top, bool bottom, bool left, bool right, Device device)
    {
        Tensor Axis(long n, bool start, bool end)
        {
            var i = torch.arange(n, ScalarType.Float32, device);
            var weight = torch.ones(n, ScalarType.Float32, device);
            if (ramp > 0 && start) weight = torch.minimum(weight, (i + 0.5f) / ramp);
            if (ramp > 0 && end) weight = torch.minimum(weight, (n - i - 0.5f) / ramp);
            return weight;
        }
        return (Axis(h, top, bottom).view(h, 1) * Axis(w, left, right).view(1, w)).view(1, 1, h, w);
    }
}
