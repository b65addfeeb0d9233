using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Training.Optimizers;

/// <summary>Max-grad-norm clipping with torch's <c>clip_grad_norm_</c> rule.</summary>
public static class GradientClipping
{
    /// <summary>
    /// Scales all gradients by <c>maxNorm / (total + 1e-6)</c> when their global L2 norm exceeds <paramref name="maxNorm"/>.
    /// Returns the norm before clipping (worth logging). <paramref name="maxNorm"/> 0 only measures.
    /// </summary>
    public static double ClipGradNorm(IEnumerable<Parameter> parameters, double maxNorm)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var grads = parameters.Select(p => p.grad).OfType<Tensor>().ToList();
        if (grads.Count == 0) return 0;
        double total = Math.Sqrt(grads.Sum(g => { var n = g.to(ScalarType.Float32).norm().item<float>(); return (double)n * n; }));
        if (maxNorm > 0)
        {
            double coef = maxNorm / (total + 1e-6);
            if (coef < 1)
            {
                using var scale = coef.ToScalar(); // held for the loop: see AdamW
                foreach (var g in grads) g.mul_(scale);
            }
        }
        return total;
    }
}
