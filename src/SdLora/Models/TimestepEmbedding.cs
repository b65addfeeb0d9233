using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// Sinusoidal timestep features (diffusers' <c>Timesteps</c>, the "positional" embedding of DDPM):
/// <c>freq_j = exp(-ln(10000) j / (half - shift))</c>, features <c>[sin(t freq), cos(t freq)]</c>,
/// swapped to <c>[cos, sin]</c> when <c>flipSinToCos</c>. Computed in fp32 whatever the model dtype.
/// </summary>
public static class TimestepFeatures
{
    public static Tensor Sinusoidal(Tensor timesteps, int dim, bool flipSinToCos, int freqShift)
    {
        int half = dim / 2;
        var t = timesteps.to(ScalarType.Float32);
        var exponent = torch.arange(half, ScalarType.Float32, timesteps.device) * (-Math.Log(10000.0) / (half - freqShift));
        var arg = t.unsqueeze(1) * exponent.exp().unsqueeze(0);
        var emb = flipSinToCos ? torch.cat([arg.cos(), arg.sin()], 1) : torch.cat([arg.sin(), arg.cos()], 1);
        if (dim % 2 == 1) emb = nn.functional.pad(emb, [0, 1]);
        return emb;
    }
}

/// <summary>The UNet's time MLP: <c>linear_1 -> SiLU -> linear_2</c>.</summary>
public sealed class TimestepEmbedding : nn.Module<Tensor, Tensor>
{
    public AdaptableLinear linear_1;
    public AdaptableLinear linear_2;

    public TimestepEmbedding(int inChannels, int timeEmbedDim) : base(nameof(TimestepEmbedding))
    {
        linear_1 = new AdaptableLinear(inChannels, timeEmbedDim);
        linear_2 = new AdaptableLinear(timeEmbedDim, timeEmbedDim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor features) => linear_2.call(nn.functional.silu(linear_1.call(features)));
}
