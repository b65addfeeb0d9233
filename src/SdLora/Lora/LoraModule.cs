using SdLora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace SdLora.Lora;

/// <summary>Which model a LoRA module belongs to.</summary>
public enum LoraPart { Unet, TextEncoder }

/// <summary>
/// A low-rank adapter for one layer: <c>delta(x) = multiplier * (alpha / rank) * up(down(dropout(x)))</c>.
/// The base layer stays frozen and untouched while the adapter is attached (the layer adds the adapter's output);
/// <see cref="Merge"/> folds the delta into the base weight instead and <see cref="Unmerge"/> takes it out again.
/// Registered parameter names are kohya's: <c>lora_down.weight</c>, <c>lora_up.weight</c>.
/// </summary>
public abstract class LoraModule : nn.Module, ILayerAdapter
{
    private Tensor? _originalWeight;
    private double _multiplier = 1.0;

    /// <summary>kohya name, e.g. <c>lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q</c>.</summary>
    public string LoraName { get; }
    public LoraPart Part { get; }
    public int Rank { get; }
    /// <summary>Alpha as given; 0 or missing means alpha = rank (scale 1), as kohya.</summary>
    public double Alpha { get; }
    public double Scale => Alpha / Rank;
    /// <summary>Dropout probability on the adapter input, applied only in training mode.</summary>
    public double Dropout { get; set; }
    /// <summary>
    /// Where the dropout masks come from. A trainer passes its run's own seeded generator, so masks are reproducible
    /// and nothing else in the process disturbs (or is disturbed by) them; null draws from torch's global generator.
    /// </summary>
    public Generator? DropoutGenerator { get; set; }
    public bool IsAttached { get; private set; }
    public bool IsMerged { get; private set; }

    /// <summary>Strength at run time (A1111's <c>&lt;lora:name:w&gt;</c>). Cannot change while merged.</summary>
    public double Multiplier
    {
        get => _multiplier;
        set
        {
            if (IsMerged) throw new InvalidOperationException($"{LoraName}: unmerge before changing the multiplier");
            _multiplier = value;
        }
    }

    protected LoraModule(string loraName, LoraPart part, int rank, double? alpha) : base(loraName)
    {
        if (rank <= 0) throw new ArgumentOutOfRangeException(nameof(rank), "rank must be positive");
        LoraName = loraName;
        Part = part;
        Rank = rank;
        Alpha = alpha is { } a && a != 0 && !double.IsNaN(a) ? a : rank;
    }

    /// <summary>The base layer's weight (the one merge changes).</summary>
    public abstract Parameter BaseWeight { get; }
    public abstract Tensor DownWeight { get; }
    public abstract Tensor UpWeight { get; }
    protected abstract Tensor UpDown(Tensor x);
    protected abstract void AddToLayer();
    protected abstract void RemoveFromLayer();

    public Tensor Forward(Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        var dtype = ComputeDType(input);
        var x = input.dtype == dtype ? input : input.to(dtype);
        if (Dropout > 0 && training) x = ApplyDropout(x);
        using var scale = (Multiplier * Scale).ToScalar(); // held for the call: TorchSharp 0.107 may free a temporary one during it
        var y = UpDown(x).mul(scale);
        var layerType = BaseWeight.dtype;
        return (y.dtype == layerType ? y : y.to(layerType)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The dtype the adapter computes in: a layer computing natively in bf16/fp16 gets its adapter in that dtype too, as
    /// torch's autocast gives kohya's bf16 runs (the small factors are cast, not the activations; casting each layer's
    /// input and output and their gradients cost a seventh of a LoRA training step). Elsewhere, the factors' dtype.
    /// </summary>
    private ScalarType ComputeDType(Tensor input) =>
        input.dtype is ScalarType.BFloat16 or ScalarType.Float16 && !CpuPrecision.ShouldUpcast(input, LayerPrecision) ? input.dtype : DownWeight.dtype;

    /// <summary>How the adapted layer computes in bf16/fp16 on the CPU.</summary>
    protected abstract CpuLowPrecision LayerPrecision { get; }

    /// <summary>A factor in <paramref name="dtype"/>; the cast is recorded by autograd, so the gradient reaches the factor in its own dtype.</summary>
    protected static Tensor In(Tensor factor, ScalarType dtype) => factor.dtype == dtype ? factor : factor.to(dtype);

    // Inverted dropout, as torch's: keep each input with probability 1 - p and scale the kept ones by 1 / (1 - p).
    private Tensor ApplyDropout(Tensor x)
    {
        if (DropoutGenerator is null) return nn.functional.dropout(x, Dropout, training: true);
        using var draw = torch.rand(x.shape, ScalarType.Float32, CPU, generator: DropoutGenerator);
        using var keep = draw.ge(Dropout).to(x.dtype).to(x.device);
        return x.mul(keep).div(1 - Dropout);
    }

    /// <summary>The full weight delta <c>multiplier * scale * up @ down</c>, fp32, shaped like the base weight.</summary>
    public Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var up = UpWeight.to(ScalarType.Float32).flatten(1);
        var down = DownWeight.to(ScalarType.Float32).flatten(1);
        return up.mm(down).mul(Multiplier * Scale).reshape(BaseWeight.shape).MoveToOuterDisposeScope();
    }

    /// <summary>Adds the adapter to its layer's forward (no weight changes).</summary>
    public void Attach()
    {
        if (IsAttached || IsMerged) return;
        AddToLayer();
        IsAttached = true;
    }

    /// <summary>Removes the adapter from its layer's forward; the layer then computes exactly its base output.</summary>
    public void Detach()
    {
        if (!IsAttached) return;
        RemoveFromLayer();
        IsAttached = false;
    }

    /// <summary>
    /// Folds the delta into the base weight (computed in fp32, rounded once to the weight's dtype) and takes the adapter
    /// out of the forward. With <paramref name="keepOriginal"/> a copy of the base weight is kept so that
    /// <see cref="Unmerge"/> restores it bit-exactly (costs one weight's memory); otherwise unmerge subtracts the delta.
    /// </summary>
    public void Merge(bool keepOriginal = false)
    {
        if (IsMerged) return;
        bool wasAttached = IsAttached;
        Detach();
        using var noGrad = torch.no_grad();
        using var delta = DeltaWeight();
        if (keepOriginal) _originalWeight = BaseWeight.detach().clone();
        if (BaseWeight.dtype == ScalarType.Float32) BaseWeight.add_(delta.to(BaseWeight.device));
        else
        {
            using var merged = BaseWeight.to(ScalarType.Float32).add_(delta.to(BaseWeight.device));
            BaseWeight.copy_(merged);
        }
        IsMerged = true;
        _reattachAfterUnmerge = wasAttached;
    }

    private bool _reattachAfterUnmerge;

    /// <summary>Undoes <see cref="Merge"/> and re-attaches the adapter if it was attached before.</summary>
    public void Unmerge()
    {
        if (!IsMerged) return;
        using (torch.no_grad())
        {
            if (_originalWeight is { } orig)
            {
                BaseWeight.copy_(orig);
                orig.Dispose();
                _originalWeight = null;
            }
            else
            {
                using var delta = DeltaWeight();
                using var restored = BaseWeight.to(ScalarType.Float32).sub_(delta.to(BaseWeight.device));
                BaseWeight.copy_(restored);
            }
        }
        IsMerged = false;
        if (_reattachAfterUnmerge) Attach();
    }

    /// <summary>
    /// kohya's initialisation: down Kaiming-uniform (a = sqrt 5, as torch Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
    /// up zeros. With <paramref name="generator"/> the draw comes from it instead of torch's global generator, so a
    /// seeded run does not depend on what else in the process draws random numbers.
    /// </summary>
    public void ResetParameters(Generator? generator = null)
    {
        using var noGrad = torch.no_grad();
        if (generator is null) nn.init.kaiming_uniform_(DownWeight, Math.Sqrt(5));
        else
        {
            double bound = 1.0 / Math.Sqrt(DownWeight.shape.Skip(1).Aggregate(1L, (a, b) => a * b));
            using var u = torch.rand(DownWeight.shape, ScalarType.Float32, generator: generator);
            DownWeight.copy_(u * (2 * bound) - bound);
        }
        UpWeight.zero_();
    }

    /// <summary>Copies trained/loaded factors in (shapes must match; any float dtype).</summary>
    public void SetWeights(Tensor down, Tensor up)
    {
        using var noGrad = torch.no_grad();
        if (!down.shape.SequenceEqual(DownWeight.shape) || !up.shape.SequenceEqual(UpWeight.shape))
            throw new ArgumentException($"{LoraName}: expected down [{string.Join(",", DownWeight.shape)}] and up [{string.Join(",", UpWeight.shape)}], got [{string.Join(",", down.shape)}] and [{string.Join(",", up.shape)}]");
        DownWeight.copy_(down);
        UpWeight.copy_(up);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            Detach();
            _originalWeight?.Dispose();
        }
        base.Dispose(disposing);
    }
}

/// <summary>LoRA for a Linear layer: down <c>[r, in]</c>, up <c>[out, r]</c>.</summary>
public sealed class LoraLinear : LoraModule
{
    private readonly AdaptableLinear _target;
    public Linear lora_down;
    public Linear lora_up;

    public LoraLinear(string loraName, LoraPart part, AdaptableLinear target, int rank, double? alpha, ScalarType dtype = ScalarType.Float32)
        : base(loraName, part, rank, alpha)
    {
        lora_down = nn.Linear(target.InFeatures, rank, hasBias: false, device: target.weight.device, dtype: dtype);
        lora_up = nn.Linear(rank, target.OutFeatures, hasBias: false, device: target.weight.device, dtype: dtype);
        RegisterComponents();
        _target = target; // after RegisterComponents: the base layer is not part of the adapter's state
        ResetParameters();
    }

    public AdaptableLinear Target => _target;
    public override Parameter BaseWeight => _target.weight;
    public override Tensor DownWeight => lora_down.weight!;
    public override Tensor UpWeight => lora_up.weight!;
    protected override Tensor UpDown(Tensor x) => nn.functional.linear(nn.functional.linear(x, In(DownWeight, x.dtype)), In(UpWeight, x.dtype));
    protected override CpuLowPrecision LayerPrecision => _target.CpuLowPrecision;
    protected override void AddToLayer() => _target.AddAdapter(this);
    protected override void RemoveFromLayer() => _target.RemoveAdapter(this);
}

/// <summary>
/// LoRA for a Conv2d layer ("LoCon" for 3x3): down is a conv with the base layer's kernel, stride and padding
/// <c>[r, in, k, k]</c>, up a 1x1 conv <c>[out, r, 1, 1]</c>.
/// </summary>
public sealed class LoraConv : LoraModule
{
    private readonly AdaptableConv2d _target;
    public Conv2d lora_down;
    public Conv2d lora_up;

    public LoraConv(string loraName, LoraPart part, AdaptableConv2d target, int rank, double? alpha, ScalarType dtype = ScalarType.Float32)
        : base(loraName, part, rank, alpha)
    {
        lora_down = nn.Conv2d(target.InChannels, rank, target.KernelSize, stride: target.Stride, padding: target.Padding, bias: false, device: target.weight.device, dtype: dtype);
        lora_up = nn.Conv2d(rank, target.OutChannels, 1, bias: false, device: target.weight.device, dtype: dtype);
        RegisterComponents();
        _target = target; // after RegisterComponents: the base layer is not part of the adapter's state
        ResetParameters();
    }

    public AdaptableConv2d Target => _target;
    public override Parameter BaseWeight => _target.weight;
    public override Tensor DownWeight => lora_down.weight!;
    public override Tensor UpWeight => lora_up.weight!;
    protected override Tensor UpDown(Tensor x) =>
        Convolutions.Conv2d(Convolutions.Conv2d(x, In(DownWeight, x.dtype), null, _target.Stride, _target.Padding), In(UpWeight, x.dtype), null, 1, 0);
    protected override CpuLowPrecision LayerPrecision => _target.CpuLowPrecision;
    protected override void AddToLayer() => _target.AddAdapter(this);
    protected override void RemoveFromLayer() => _target.RemoveAdapter(this);
}
