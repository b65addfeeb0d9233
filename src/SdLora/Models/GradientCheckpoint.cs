using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Models;

/// <summary>
/// Activation checkpointing: runs a sub-network without keeping its intermediate activations and
/// recomputes them during backward. The recomputation back-propagates into every leaf the sub-network
/// uses (its weights, LoRA adapters attached to it), and returns the gradients of the explicit inputs.
/// </summary>
public static class GradientCheckpoint
{
    // A leaf that requires grad, passed along so the autograd node is recorded even when no explicit
    // input requires grad (frozen-UNet LoRA training: the latents and the text context don't).
    private static readonly ThreadLocal<Tensor> Anchor = new(() => torch.zeros(1, requires_grad: true).DetachFromDisposeScope());

    /// <summary>Computes <c>fn(inputs)</c>, storing only the inputs for backward.</summary>
    public static Tensor Run(Func<Tensor[], Tensor> fn, params Tensor[] inputs)
    {
        var args = new object[inputs.Length + 2];
        args[0] = fn;
        args[1] = Anchor.Value!;
        for (int i = 0; i < inputs.Length; i++) args[i + 2] = inputs[i];
        return RecomputeFunction.apply(args)[0];
    }

    private sealed class RecomputeFunction : autograd.MultiTensorFunction<RecomputeFunction>
    {
        public override string Name => "GradientCheckpoint";

        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var fn = (Func<Tensor[], Tensor>)vars[0];
            var inputs = vars.Skip(2).Cast<Tensor>().ToArray();
            ctx.save_data("fn", fn);
            ctx.save_data("requires_grad", inputs.Select(t => t.requires_grad).ToArray());
            ctx.save_for_backward(inputs.ToList());
            // No graph inside: keeping the block's activations is exactly what checkpointing avoids.
            using var noGrad = torch.no_grad();
            return [fn(inputs)];
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> grad_outputs)
        {
            var fn = (Func<Tensor[], Tensor>)ctx.get_data("fn");
            var requiresGrad = (bool[])ctx.get_data("requires_grad");
            var saved = ctx.get_saved_variables();
            var result = new List<Tensor> { null!, null! };
            using var scope = torch.NewDisposeScope();
            using (torch.enable_grad())
            {
                var inputs = saved.Select((t, i) => t.detach().requires_grad_(requiresGrad[i])).ToArray();
                var output = fn(inputs);
                if (output.requires_grad)
                    torch.autograd.backward([output], [grad_outputs[0]]);
                foreach (var (input, i) in inputs.Select((t, i) => (t, i)))
                    result.Add(requiresGrad[i] && input.grad is { } g ? g.MoveToOuterDisposeScope() : null!);
            }
            return result;
        }
    }
}
