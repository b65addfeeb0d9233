using SdLora.Training.Optimizers;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Tests.Training;

public class AdafactorTests
{
    /// <summary>
    /// One tensor's Adafactor steps written out in plain doubles from the paper (Shazeer &amp; Stern 2018, Alg. 4/5 with
    /// transformers' relative step and parameter scale): the second moment of a matrix (over its last two dimensions)
    /// as row and column means, of a vector in full.
    /// </summary>
    private sealed class ScalarAdafactor(double[] p, long[] shape, bool relativeStep, bool scaleParameter, double? beta1, double lr, double weightDecay)
    {
        private readonly double[] _v = new double[p.Length], _m = new double[p.Length];
        private readonly int _cols = (int)shape[^1], _rows = shape.Length >= 2 ? (int)shape[^2] : 1;
        private readonly double[] _r = new double[p.Length / (int)shape[^1]], _c = new double[shape.Length >= 2 ? p.Length / (int)shape[^2] : 0];
        private int _t;

        private static double Rms(IEnumerable<double> x) { var a = x.ToArray(); return Math.Sqrt(a.Sum(v => v * v) / a.Length); }

        public void Step(double[] g)
        {
            _t++;
            double beta2 = 1 - Math.Pow(_t, -0.8);
            double rho = relativeStep ? Math.Min(1e-2, 1 / Math.Sqrt(_t)) : lr;
            double stepSize = scaleParameter ? Math.Max(1e-3, Rms(p)) * rho : rho;
            var u = new double[p.Length];
            if (shape.Length >= 2)
            {
                int matrices = p.Length / (_rows * _cols);
                for (int b = 0; b < matrices; b++)
                {
                    int at(int i, int j) => b * _rows * _cols + i * _cols + j;
                    for (int i = 0; i < _rows; i++)
                        _r[b * _rows + i] = beta2 * _r[b * _rows + i] + (1 - beta2) * Enumerable.Range(0, _cols).Average(j => g[at(i, j)] * g[at(i, j)] + 1e-30);
                    for (int j = 0; j < _cols; j++)
                        _c[b * _cols + j] = beta2 * _c[b * _cols + j] + (1 - beta2) * Enumerable.Range(0, _rows).Average(i => g[at(i, j)] * g[at(i, j)] + 1e-30);
                    double rowMean = Enumerable.Range(0, _rows).Average(i => _r[b * _rows + i]);
                    for (int i = 0; i < _rows; i++)
                        for (int j = 0; j < _cols; j++)
                            u[at(i, j)] = g[at(i, j)] / Math.Sqrt(_r[b * _rows + i] / rowMean * _c[b * _cols + j]);
                }
            }
            else
                for (int i = 0; i < p.Length; i++)
                {
                    _v[i] = beta2 * _v[i] + (1 - beta2) * (g[i] * g[i] + 1e-30);
                    u[i] = g[i] / Math.Sqrt(_v[i]);
                }
            double clip = Math.Max(1, Rms(u) / 1.0);
            for (int i = 0; i < p.Length; i++) u[i] = u[i] / clip * stepSize;
            if (beta1 is { } b1)
                for (int i = 0; i < p.Length; i++) u[i] = _m[i] = b1 * _m[i] + (1 - b1) * u[i];
            for (int i = 0; i < p.Length; i++) p[i] -= weightDecay * stepSize * p[i] + u[i];
        }
    }

    private static readonly long[][] Shapes = [[3, 4], [5], [2, 3, 2, 2]];

    [Theory]
    [InlineData(true, true, null, 0.0, 0.0)]       // transformers' and kohya's defaults: relative steps scaled by each tensor's RMS
    [InlineData(false, false, 0.9, 1e-2, 0.01)]    // a fixed learning rate, first moment and weight decay
    public void Adafactor_steps_follow_the_algorithm(bool relativeStep, bool scaleParameter, double? beta1, double lr, double weightDecay)
    {
        using var g = new Generator(17, CPU);
        var parameters = Shapes.Select(s => new Parameter(torch.randn(s, generator: g) * 0.5)).ToList();
        // The reference updates these arrays in place.
        var refValues = parameters.Select(p => p.data<float>().Select(v => (double)v).ToArray()).ToList();
        var refs = refValues.Select((v, i) => new ScalarAdafactor(v, Shapes[i], relativeStep, scaleParameter, beta1, lr, weightDecay)).ToList();
        using var opt = new Adafactor([new ParamGroup("all", parameters, lr)], relativeStep, scaleParameter, false, beta1, weightDecay: weightDecay);
        for (int step = 0; step < 4; step++)
        {
            for (int i = 0; i < parameters.Count; i++)
            {
                using var grad = torch.randn(Shapes[i], generator: g) * (step + 1);
                parameters[i].grad = grad.clone();
                refs[i].Step(grad.data<float>().Select(v => (double)v).ToArray());
            }
            opt.Step();
            for (int i = 0; i < parameters.Count; i++)
            {
                using var expected = torch.tensor(refValues[i], Shapes[i]);
                Fixtures.AssertClose(expected, parameters[i], 1e-5, $"step {step + 1}, tensor {i}");
            }
        }
        // Factored: a [3,4] weight keeps 3 + 4 numbers of second-moment state, a vector its own size.
        var state = opt.StateDict();
        Assert.Equal([3L], state["g0.p0.exp_avg_sq_row"].shape);
        Assert.Equal([4L], state["g0.p0.exp_avg_sq_col"].shape);
        Assert.Equal([2L, 3, 2], state["g0.p2.exp_avg_sq_row"].shape);
        Assert.Equal([2L, 3, 2], state["g0.p2.exp_avg_sq_col"].shape);
        Assert.Equal([5L], state["g0.p1.exp_avg_sq"].shape);
        Assert.DoesNotContain("g0.p0.exp_avg", state.Keys.Where(_ => beta1 is null));
    }

    [Fact]
    public void Adafactor_state_saved_mid_run_continues_exactly()
    {
        using var dir = Fixtures.TempDir();
        List<Parameter> Fresh() { using var g = new Generator(5, CPU); return Shapes.Select(s => new Parameter(torch.randn(s, generator: g))).ToList(); }
        Tensor Grad(int step, int i) { using var g = new Generator((ulong)(100 + step * 10 + i), CPU); return torch.randn(Shapes[i], generator: g); }
        void Step(List<Parameter> ps, Adafactor opt, int step)
        {
            for (int i = 0; i < ps.Count; i++) ps[i].grad = Grad(step, i);
            opt.Step();
        }
        var straight = Fresh();
        using var a = new Adafactor([new ParamGroup("all", straight, 1)]);
        for (int s = 0; s < 4; s++) Step(straight, a, s);

        var resumed = Fresh();
        using (var first = new Adafactor([new ParamGroup("all", resumed, 1)]))
        {
            for (int s = 0; s < 2; s++) Step(resumed, first, s);
            first.Save(dir.File("opt.safetensors"));
        }
        using var second = new Adafactor([new ParamGroup("all", resumed, 1)]);
        second.Load(dir.File("opt.safetensors"));
        Assert.Equal(2, second.StepCount);
        for (int s = 2; s < 4; s++) Step(resumed, second, s);
        for (int i = 0; i < Shapes.Length; i++)
            Assert.True(torch.equal(straight[i], resumed[i]).all().item<bool>(), $"tensor {i}");
    }

    /// <summary>
    /// A bf16 weight is trained through an fp32 master copy: fed the same gradients, the master follows an fp32 weight
    /// step for step, the weight is the master rounded once, and steps far below bf16's resolution still add up.
    /// </summary>
    [Fact]
    public void Low_precision_weights_train_through_fp32_masters_that_resume_exactly()
    {
        using var dir = Fixtures.TempDir();
        using var g = new Generator(9, CPU);
        using var start = (torch.randn([4, 6], generator: g) + 4).to(ScalarType.BFloat16); // values near 4: bf16 spacing 1/32
        var fp32 = new Parameter(start.to(ScalarType.Float32));
        var bf16 = new Parameter(start.clone());
        using var reference = new AdamW([new ParamGroup("w", [fp32], 1e-4)], weightDecay: 0);
        var adam = new AdamW([new ParamGroup("w", [bf16], 1e-4)], weightDecay: 0);
        for (int step = 0; step < 6; step++)
        {
            if (step == 3)
            {
                adam.Save(dir.File("opt.safetensors"));
                adam.Dispose();
                adam = new AdamW([new ParamGroup("w", [bf16], 1e-4)], weightDecay: 0);
                adam.Load(dir.File("opt.safetensors"));
            }
            using var grad = torch.randn([4, 6], generator: g).to(ScalarType.BFloat16);
            fp32.grad = grad.to(ScalarType.Float32);
            bf16.grad = grad.clone();
            reference.Step();
            adam.Step();
            var master = adam.TrainedValue(0, 0);
            Assert.Equal(ScalarType.Float32, master.dtype);
            Assert.True(torch.equal(fp32, master).all().item<bool>(), $"step {step + 1}: master differs from the fp32 run");
            Assert.True(torch.equal(master.to(ScalarType.BFloat16), bf16).all().item<bool>(), $"step {step + 1}: weight is not the rounded master");
        }
        adam.Dispose();
        // Six steps of ~1e-4 each are below bf16's spacing at 4 (1/32): without the master the weight would not move at all.
        Assert.True((fp32 - start.to(ScalarType.Float32)).abs().max().item<float>() > 1e-4);
    }
}
