using SdLora.Training.Optimizers;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Tests.Training;

public class ProdigyReferenceTests
{
    /// <summary>
    /// Prodigy's step written out in plain doubles from the paper's algorithm (Mishchenko &amp; Defazio 2023, Alg. 2/3
    /// with Adam moments scaled by d, as the prodigyopt package does), for one parameter group.
    /// </summary>
    private sealed class ScalarProdigy(double[] p, double lr, double beta1, double beta2, double weightDecay, bool decouple,
        bool biasCorrection, bool safeguardWarmup, double d0, double dCoef)
    {
        private readonly double[] _p0 = (double[])p.Clone(), _s = new double[p.Length], _m = new double[p.Length], _v = new double[p.Length];
        private readonly double _beta3 = Math.Sqrt(beta2);
        private double _numerator;
        private int _k;
        private readonly double _d0 = d0;
        public double D = d0, DMax = d0;

        public void Step(double[] gradIn)
        {
            double bias = biasCorrection ? Math.Sqrt(1 - Math.Pow(beta2, _k + 1)) / (1 - Math.Pow(beta1, _k + 1)) : 1;
            double d = D, dlr = d * lr * bias;
            double numerator = _numerator * _beta3, denom = 0;
            var grad = gradIn.Select((g, i) => weightDecay != 0 && !decouple ? g + weightDecay * p[i] : g).ToArray();
            for (int i = 0; i < p.Length; i++)
            {
                numerator += d / _d0 * dlr * grad[i] * (_p0[i] - p[i]);
                _m[i] = _m[i] * beta1 + d * (1 - beta1) * grad[i];
                _v[i] = _v[i] * beta2 + d * d * (1 - beta2) * grad[i] * grad[i];
                _s[i] = _s[i] * _beta3 + d / _d0 * (safeguardWarmup ? d : dlr) * grad[i];
                denom += Math.Abs(_s[i]);
            }
            if (denom == 0) return;
            double dHat = dCoef * numerator / denom;
            if (d == _d0) d = Math.Max(d, dHat);
            DMax = Math.Max(DMax, dHat);
            d = Math.Min(DMax, d * double.PositiveInfinity); // growth rate unbounded (the default)
            _numerator = numerator;
            D = d;
            for (int i = 0; i < p.Length; i++)
            {
                if (weightDecay != 0 && decouple) p[i] -= weightDecay * dlr * p[i];
                p[i] -= dlr * _m[i] / (Math.Sqrt(_v[i]) + d * 1e-8);
            }
            _k++;
        }
    }

    [Theory]
    [InlineData(0.0, true, false, false, 1.0)]
    [InlineData(0.01, true, true, false, 2.0)]
    [InlineData(0.01, false, false, true, 1.0)]
    [InlineData(0.1, true, true, true, 1.5)]
    public void Prodigy_follows_the_reference_algorithm_step_by_step(double weightDecay, bool decouple, bool biasCorrection, bool safeguard, double dCoef)
    {
        using var scope = torch.NewDisposeScope();
        double[] target = [3, -1, 0.5, 2];
        double[] start = [0.1, 0.2, -0.3, 0.4];
        const double lr = 1.0, d0 = 1e-4;
        // fp32, as the LoRA master weights are; the reference runs in doubles.
        var p = new Parameter(torch.tensor(start.Select(v => (float)v).ToArray()), requires_grad: true);
        using var opt = new Prodigy([new ParamGroup("unet", [p], lr)], weightDecay: weightDecay, decouple: decouple,
            useBiasCorrection: biasCorrection, safeguardWarmup: safeguard, d0: d0, dCoef: dCoef);
        var mine = (double[])start.Clone();
        var shadow = new ScalarProdigy(mine, lr, 0.9, 0.999, weightDecay, decouple, biasCorrection, safeguard, d0, dCoef);
        for (int step = 0; step < 25; step++)
        {
            var grad = mine.Select((v, i) => v - target[i]).ToArray(); // gradient of 0.5 |p - target|^2 at the reference point
            shadow.Step(grad);
            opt.ZeroGrad();
            ((p - torch.tensor(target.Select(v => (float)v).ToArray())).pow(2).sum() * 0.5).backward();
            opt.Step();
            var got = p.detach().to(ScalarType.Float64).data<double>().ToArray();
            for (int i = 0; i < mine.Length; i++)
                Assert.True(Math.Abs(got[i] - mine[i]) <= 1e-4 * Math.Max(1, Math.Abs(mine[i])), $"step {step + 1}, p[{i}]: {got[i]} vs reference {mine[i]}");
            Assert.True(Math.Abs(opt.D - shadow.D) <= 1e-4 * shadow.D, $"step {step + 1}: d {opt.D} vs reference {shadow.D}");
        }
        Assert.True(shadow.D > 10 * d0, $"precondition: d grew from d0 (to {shadow.D}), so the estimate is exercised");
    }
}
