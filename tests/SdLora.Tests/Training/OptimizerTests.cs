using SdLora.Training;
using SdLora.Training.Optimizers;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace SdLora.Tests.Training;

public class OptimizerTests
{
    /// <summary>A few fp32 operations against the same arithmetic in double: a few units of fp32 rounding (1.2e-7) of values near 1.</summary>
    private static readonly Tolerance FloatSteps = Tolerance.Golden(1e-6);

    private static Parameter Param(params float[] v) => new(torch.tensor(v), requires_grad: true);

    private static void SetGrad(Parameter p, params float[] g)
    {
        // Gradient of sum(p * g) is g.
        (p * torch.tensor(g)).sum().backward();
    }

    private static double[] Values(Parameter p) => p.detach().to(ScalarType.Float64).data<double>().ToArray();

    [Fact]
    public void ZeroGrad_zeroes_every_gradient_and_leaves_no_tensor_to_the_finalizer()
    {
        // A wrapper left to the finalizer can be freed while its native call still runs (TorchSharp 0.107): the step's
        // helpers must dispose what they make, so this thread's live count is back where it was.
        var a = Param(1f, 2f);
        var b = Param(3f);
        using var opt = new AdamW([new ParamGroup("unet", [a], 0.1), new ParamGroup("text_encoder", [b], 0.1)]);
        SetGrad(a, 0.5f, -1f);
        SetGrad(b, 2f);
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        opt.ZeroGrad();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        Assert.Equal([0f, 0f], a.grad!.data<float>().ToArray());
        Assert.Equal([0f], b.grad!.data<float>().ToArray());
    }

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
            for (int i = 0; i < 2; i++) Fixtures.AssertClose(x[i], got[i], FloatSteps, $"AdamW step {t} x[{i}]");
        }
    }

    [Fact]
    public void AdamW_is_bit_identical_to_torchsharp_torch_optim_AdamW_with_groups_and_a_schedule()
    {
        // sdlora keeps its own AdamW for the resumable safetensors state (docs/libraries.md); the update itself must
        // stay exactly the library's. Same kernels in the same order, so equality is exact on any CPU.
        var gen = new torch.Generator(7);
        long[][] shapes = [[4, 32], [32, 4], [4, 48], [48, 4], [7]];
        var ours = shapes.Select(s => new Parameter(torch.randn(s, generator: gen))).ToArray();
        var theirs = ours.Select(p => new Parameter(p.detach().clone())).ToArray();
        using var adamw = new AdamW([new ParamGroup("unet", ours[..3], 1e-3), new ParamGroup("te", ours[3..], 5e-4)], 0.9, 0.999, 1e-8, 0.01);
        var reference = torch.optim.AdamW(
        [
            new TorchSharp.Modules.AdamW.ParamGroup(theirs[..3], lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01),
            new TorchSharp.Modules.AdamW.ParamGroup(theirs[3..], lr: 5e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01),
        ]);
        var groups = reference.ParamGroups.ToArray();
        for (int step = 1; step <= 25; step++)
        {
            using (torch.no_grad())
                for (int i = 0; i < ours.Length; i++)
                {
                    var grad = torch.randn(shapes[i], generator: gen) * (1.0 / step);
                    ours[i].grad = grad.clone();
                    theirs[i].grad = grad;
                }
            double multiplier = 0.5 * (1 + Math.Cos(Math.PI * step / 25)); // cosine schedule
            adamw.Step(multiplier);
            groups[0].LearningRate = 1e-3 * multiplier;
            groups[1].LearningRate = 5e-4 * multiplier;
            reference.step();
            for (int i = 0; i < ours.Length; i++)
                Assert.True(ours[i].eq(theirs[i]).all().item<bool>(), $"step {step}, parameter {i} differs from torch.optim.AdamW");
        }
    }

    [Fact]
    public void Per_group_learning_rates_and_schedule_multiplier_apply()
    {
        var a = Param(0f); var b = Param(0f);
        using var opt = new AdamW([new ParamGroup("unet", [a], 1e-2), new ParamGroup("te", [b], 1e-3)], weightDecay: 0);
        SetGrad(a, 1f); SetGrad(b, 1f);
        opt.Step(0.5);
        Fixtures.AssertClose(-0.005, Values(a)[0], FloatSteps, "unet group");
        Fixtures.AssertClose(-0.0005, Values(b)[0], FloatSteps, "te group");
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
            for (int i = 0; i < 2; i++) Fixtures.AssertClose(x[i], got[i], FloatSteps, $"Lion step {t} x[{i}]");
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
        Fixtures.AssertClose(5.0, norm, FloatSteps, "norm");
        Fixtures.AssertClose(0.6, a.grad!.data<float>()[0], FloatSteps, "clipped a");
        Fixtures.AssertClose(0.8, b.grad!.data<float>()[0], FloatSteps, "clipped b");
        Fixtures.AssertClose(1.0, GradientClipping.ClipGradNorm([a, b], 10.0), FloatSteps, "norm after clipping"); // under the limit: untouched
    }
}
