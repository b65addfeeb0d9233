using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// Initial weights for training a model from scratch. Every parameter is set explicitly (module constructors leave
/// some, e.g. GroupNorm's, as allocated), from a caller's generator, never torch's global one.
/// </summary>
public static class ModuleInit
{
    /// <summary>
    /// Fresh weights from <paramref name="generator"/> (nothing from torch's global generator): norms at identity,
    /// embeddings N(0, 0.02), other weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's default bound), biases zero; with
    /// <paramref name="zeroResidualOutputs"/> the last layer of each residual branch and the output conv start at zero, so
    /// every block starts as the identity (as in ADM's UNet).
    /// </summary>
    public static void Seeded(nn.Module module, Generator generator, bool zeroResidualOutputs)
    {
        using var noGrad = torch.no_grad();
        var done = new HashSet<string>();
        foreach (var (name, m) in module.named_modules())
        {
            string prefix = name.Length == 0 ? "" : name + ".";
            switch (m)
            {
                case TorchSharp.Modules.GroupNorm or TorchSharp.Modules.LayerNorm:
                    foreach (var (pn, p) in m.named_parameters(recurse: false))
                    {
                        if (pn == "weight") p.fill_(1); else p.zero_();
                        done.Add(prefix + pn);
                    }
                    break;
                case TorchSharp.Modules.Embedding:
                    foreach (var (pn, p) in m.named_parameters(recurse: false))
                    {
                        p.copy_(torch.randn(p.shape, generator: generator) * 0.02);
                        done.Add(prefix + pn);
                    }
                    break;
            }
        }
        foreach (var (name, p) in module.named_parameters())
        {
            if (done.Contains(name)) continue;
            bool zero = p.dim() == 1 || (zeroResidualOutputs && IsResidualOutput(name));
            if (zero) { p.zero_(); continue; }
            double bound = 1 / Math.Sqrt(p.numel() / p.shape[0]);
            p.copy_((torch.rand(p.shape, generator: generator) * 2 - 1) * bound);
        }
    }

    private static bool IsResidualOutput(string name) =>
        name.StartsWith("conv_out.") || name.Contains(".conv2.") || name.Contains(".proj_out.");
}
