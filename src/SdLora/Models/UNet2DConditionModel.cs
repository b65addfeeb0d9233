using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// The Stable Diffusion 1.x denoiser (diffusers' UNet2DConditionModel): predicts the noise in a latent
/// <c>sample</c> at diffusion <c>timestep</c>, conditioned on the text encoder's hidden states.
/// Parameter names equal diffusers', so a diffusers <c>unet/</c> checkpoint loads by name.
/// </summary>
public sealed class UNet2DConditionModel : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    public AdaptableConv2d conv_in;
    public TimestepEmbedding time_embedding;
    public ModuleList<UNetDownBlock> down_blocks;
    public UNetMidBlock2DCrossAttn mid_block;
    public ModuleList<UNetUpBlock> up_blocks;
    public GroupNorm conv_norm_out;
    public AdaptableConv2d conv_out;

    public UNetConfig Config { get; }

    /// <summary>
    /// Training-time memory saver: when on (and the module is in training mode with grad enabled), each
    /// resnet and transformer recomputes its activations in backward instead of storing them.
    /// </summary>
    public bool GradientCheckpointing { get; set; }

    public UNet2DConditionModel(UNetConfig config) : base(nameof(UNet2DConditionModel))
    {
        Config = config;
        var ch = config.Channels;
        var heads = config.HeadsPerBlock;
        int groups = config.NormNumGroups, layers = config.LayersPerBlock, ctxDim = config.CrossAttentionDim;
        double eps = config.NormEps;
        bool linear = config.UseLinearProjection;
        int tembDim = ch[0] * 4;

        conv_in = new AdaptableConv2d(config.InChannels, ch[0], 3, padding: 1);
        time_embedding = new TimestepEmbedding(ch[0], tembDim);

        var downs = new List<UNetDownBlock>();
        int output = ch[0];
        for (int i = 0; i < ch.Length; i++)
        {
            int input = output;
            output = ch[i];
            bool last = i == ch.Length - 1;
            downs.Add(config.DownBlocks[i] switch
            {
                "CrossAttnDownBlock2D" => new CrossAttnDownBlock2D(input, output, tembDim, layers, groups, eps, heads[i], ctxDim, linear, !last),
                "DownBlock2D" => new DownBlock2D(input, output, tembDim, layers, groups, eps, !last),
                var other => throw new SdLoraException($"UNet config: down block type '{other}' is not supported (SD1.x uses CrossAttnDownBlock2D and DownBlock2D)"),
            });
        }
        down_blocks = new ModuleList<UNetDownBlock>(downs.ToArray());

        mid_block = new UNetMidBlock2DCrossAttn(ch[^1], tembDim, groups, eps, heads[^1], ctxDim, linear);

        var reversed = ch.Reverse().ToArray();
        var reversedHeads = heads.Reverse().ToArray();
        var ups = new List<UNetUpBlock>();
        output = reversed[0];
        for (int i = 0; i < reversed.Length; i++)
        {
            int prevOutput = output;
            output = reversed[i];
            int input = reversed[Math.Min(i + 1, reversed.Length - 1)];
            bool last = i == reversed.Length - 1;
            ups.Add(config.UpBlocks[i] switch
            {
                "CrossAttnUpBlock2D" => new CrossAttnUpBlock2D(input, prevOutput, output, tembDim, layers + 1, groups, eps, reversedHeads[i], ctxDim, linear, !last),
                "UpBlock2D" => new UpBlock2D(input, prevOutput, output, tembDim, layers + 1, groups, eps, !last),
                var other => throw new SdLoraException($"UNet config: up block type '{other}' is not supported (SD1.x uses UpBlock2D and CrossAttnUpBlock2D)"),
            });
        }
        up_blocks = new ModuleList<UNetUpBlock>(ups.ToArray());

        conv_norm_out = Normalization.GroupNorm(groups, ch[0], eps);
        conv_out = new AdaptableConv2d(ch[0], config.OutChannels, 3, padding: 1);
        RegisterComponents();
    }

    /// <param name="sample">Noisy latents [B, 4, H, W].</param>
    /// <param name="timestep">0-d (same for the whole batch) or [B]; integer or float.</param>
    /// <param name="encoderHiddenStates">Text conditioning [B, 77, crossAttentionDim].</param>
    public override Tensor forward(Tensor sample, Tensor timestep, Tensor encoderHiddenStates) =>
        Forward(sample, timestep, encoderHiddenStates, null);

    /// <param name="debug">When given, receives detached copies of the intermediate activations under the
    /// reference fixture's names (<c>debug.time_proj</c>, <c>debug.down_blocks.0</c>, ...); they outlive any dispose scope, the caller disposes them.</param>
    public Tensor Forward(Tensor sample, Tensor timestep, Tensor encoderHiddenStates, Dictionary<string, Tensor>? debug)
    {
        long batch = sample.shape[0];
        var t = timestep.dim() == 0 ? timestep.reshape(1).expand(batch) : timestep;
        var features = TimestepFeatures.Sinusoidal(t, Config.Channels[0], Config.FlipSinToCos, Config.FreqShift).to(sample.dtype);
        Capture(debug, "time_proj", features);
        var temb = time_embedding.call(features);
        Capture(debug, "time_embedding", temb);

        bool checkpoint = GradientCheckpointing && training && torch.is_grad_enabled();
        var x = conv_in.call(sample);
        Capture(debug, "conv_in", x);
        var skips = new List<Tensor> { x };
        for (int i = 0; i < down_blocks.Count; i++)
        {
            x = down_blocks[i].Forward(x, temb, encoderHiddenStates, skips, checkpoint);
            Capture(debug, $"down_blocks.{i}", x);
        }
        x = mid_block.Forward(x, temb, encoderHiddenStates, checkpoint);
        Capture(debug, "mid_block", x);
        for (int i = 0; i < up_blocks.Count; i++)
        {
            var block = up_blocks[i];
            // The upsampler must land on the next skip's size (odd sizes round down on the way in).
            long[]? upSize = null;
            int remaining = skips.Count - block.SkipCount;
            if (i < up_blocks.Count - 1 && remaining > 0)
            {
                var next = skips[remaining - 1];
                upSize = [next.shape[2], next.shape[3]];
            }
            x = block.Forward(x, skips, temb, encoderHiddenStates, upSize, checkpoint);
            Capture(debug, $"up_blocks.{i}", x);
        }
        x = conv_norm_out.call(x);
        Capture(debug, "conv_norm_out", x);
        return conv_out.call(nn.functional.silu(x));
    }

    private static void Capture(Dictionary<string, Tensor>? debug, string name, Tensor value)
    {
        if (debug is not null) debug["debug." + name] = value.detach().clone().DetachFromDisposeScope();
    }
}
