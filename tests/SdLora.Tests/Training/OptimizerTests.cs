using SdLora.Training;
using SdLora.Training.Optimizers;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Tests.Training;

public class OptimizerTests
{
    private static Parameter Param(params float[] v) => new(torch.tensor(v), requires_grad: true);

    private static void SetGrad(Parameter p, params float[] g)
    {
        // Gradient of sum(p * g) is g.
        (p * torch.tensor(g)).sum().backward();
    }

    private static double[] Values(Parameter p) => p.detach().to(ScalarType.Float64).data<double>().ToArray();

    [Fact]
    public void AdamW_matches_hand_computed_two_steps()
    {
        var p = Param(1f, -2f);
        using var opt = new AdamW([new ParamGroup("unet", [p], 0.1)], 0.9, 0.999, 1e-8, 0.01);
        double[] x = [1, -2], m = [0, 0], v = [0, 0];
        float[][] grads = [[0.5f, -0.25f], [0.1f, 0.3f]];
        for (int t = 1; t <= 2; t++)
        {
            opt.ZeroGrad();
            SetGrad(p, grads[t - 1]);
            opt.Step();
            for (int i = 0; i < 2; i++)
            {
                double g = grads[t - 1][i];
                x[i] *= 1 - 0.1 * 0.01;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                double mh = m[i] / (1 - Math.Pow(0.9, t)), vh = v[i] / (1 - Math.Pow(0.999, t));
                x[i] -= 0.1 * mh / (Math.Sqrt(vh) + 1e-8);
            }
            var got = Values(p);
            for (int i = 0; i < 2; i++) Assert.Equal(x[i], got[i], 5);
        }
    }

    [Fact]
    public void Per_group_learning_rates_and_schedule_multiplier_apply()
    {
        var a = Param(0f); var b = Param(0f);
        using var opt = new AdamW([new ParamGroup("unet", [a], 1e-2), new ParamGroup("te", [b], 1e-3)], weightDecay: 0);
        SetGrad(a, 1f); SetGrad(b, 1f);
        opt.Step(0.5);
        Assert.Equal(-0.005, Values(a)[0], 6);
        Assert.Equal(-0.0005, Values(b)[0], 6);
        Assert.Equal([0.005, 0.0005], opt.LastLearningRates);
    }

    [Fact]
    public void Lion_matches_hand_computed_two_steps()
    {
        var p = Param(1f, -2f);
        using var opt = new Lion([new ParamGroup("unet", [p], 0.01)], 0.9, 0.99, weightDecay: 0.1);
        double[] x = [1, -2], m = [0, 0];
        float[][] grads = [[0.5f, -0.25f], [-0.2f, -0.3f]];
        for (int t = 0; t < 2; t++)
        {
            opt.ZeroGrad();
            SetGrad(p, grads[t]);
            opt.Step();
            for (int i = 0; i < 2; i++)
            {
                double g = grads[t][i];
                x[i] *= 1 - 0.01 * 0.1;
                x[i] -= 0.01 * Math.Sign(0.9 * m[i] + 0.1 * g);
                m[i] = 0.99 * m[i] + 0.01 * g;
            }
            var got = Values(p);
            for (int i = 0; i < 2; i++) Assert.Equal(x[i], got[i], 6);
        }
    }

    private static double Quadratic(Parameter p, Tensor target) => ((p - target).pow(2).sum() * 0.5).item<float>();

    [Fact]
    public void Prodigy_adapts_its_step_and_decreases_a_quadratic()
    {
        var target = torch.tensor(new float[] { 3f, -1f, 0.5f, 2f });
        var p = Param(0.1f, 0.1f, 0.1f, 0.1f);
        using var opt = new Prodigy([new ParamGroup("unet", [p], 1.0)]);
        double start = Quadratic(p, target);
        for (int i = 0; i < 300; i++)
        {
            opt.ZeroGrad();
            ((p - target).pow(2).sum() * 0.5).backward();
            opt.Step();
        }
        double end = Quadratic(p, target);
        Assert.True(opt.D > 1e-3, $"d stayed at {opt.D}");
        Assert.True(end < start * 0.01, $"loss {start} -> {end}");
    }

    [Fact]
    public void Optimizer_state_round_trips_through_safetensors_for_resume()
    {
        using var tmp = Fixtures.TempDir();
        var target = torch.tensor(new float[] { 1f, 2f });
        foreach (var name in new[] { "AdamW", "Lion", "Prodigy" })
        {
            var cfg = new TrainingConfig { Optimizer = name };
            var p1 = Param(0f, 0f); var p2 = Param(0f, 0f);
            using var o1 = OptimizerFactory.Create(cfg, [new ParamGroup("u", [p1], 0.05)]);
            using var o2 = OptimizerFactory.Create(cfg, [new ParamGroup("u", [p2], 0.05)]);
            void Train(TrainingOptimizer o, Parameter p, int steps)
            {
                for (int i = 0; i < steps; i++) { o.ZeroGrad(); ((p - target).pow(2).sum()).backward(); o.Step(); }
            }
            Train(o1, p1, 6);
            Train(o2, p2, 3);
            var path = tmp.File(name + ".safetensors");
            o2.Save(path);
            var p3 = new Parameter(p2.detach().clone(), requires_grad: true);
            using var o3 = OptimizerFactory.Create(cfg, [new ParamGroup("u", [p3], 0.05)]);
            o3.Load(path);
            Assert.Equal(3, o3.StepCount);
            Train(o3, p3, 3);
            Assert.Equal(Values(p1), Values(p3));
        }
    }

    [Fact]
    public void Optimizer_args_are_read_and_unknown_ones_refused()
    {
        var p = Param(0f);
        var cfg = new TrainingConfig { Optimizer = "Prodigy", OptimizerArgs = ["d_coef=2", "weight_decay=0.01", "betas=0.9,0.99"] };
        using var o = (Prodigy)OptimizerFactory.Create(cfg, [new ParamGroup("u", [p], 1.0)]);
        Assert.Equal(2.0, o.DCoef);
        Assert.Equal(0.99, o.Beta2);
        Assert.Equal(0.01, o.WeightDecay);
        var ex = Assert.Throws<SdLoraException>(() => OptimizerFactory.Create(cfg with { Optimizer = "AdamW", OptimizerArgs = ["momentum=0.9"] }, [new ParamGroup("u", [p], 1.0)]));
        Assert.StartsWith("optimizer-args 'momentum' is not a setting of AdamW", ex.Message);
    }

    [Fact]
    public void Grad_norm_clipping_scales_to_max_norm()
    {
        var a = Param(0f, 0f); var b = Param(0f);
        SetGrad(a, 3f, 0f); SetGrad(b, 4f);
        double norm = GradientClipping.ClipGradNorm([a, b], 1.0);
        Assert.Equal(5.0, norm, 5);
        Assert.Equal(0.6, a.grad!.data<float>()[0], 5);
        Assert.Equal(0.8, b.grad!.data<float>()[0], 5);
        Assert.Equal(1.0, GradientClipping.ClipGradNorm([a, b], 10.0), 5); // under the limit: untouched
    }
}
