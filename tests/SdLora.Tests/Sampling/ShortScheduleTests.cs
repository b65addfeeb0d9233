using SdLora.Sampling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace SdLora.Tests.Sampling;

/// <summary>
/// The last steps of short runs, where the samplers branch (the step into t = 0, the final alpha product, DPM-Solver++'s
/// lower-order final step, PLMS's warm-up). The golden sequences use 20 steps on SD1.5's schedule, where these branches
/// either never run or change the result by less than the tolerance. Here a small schedule with large betas makes every
/// branch visible, and each expectation is the paper's update written out in doubles, step by step, from betas computed
/// here (not from <see cref="NoiseSchedule"/>'s tables).
/// </summary>
public sealed class ShortScheduleTests
{
    private static readonly double[] X = [1.3, -0.7, 0.2, 2.1];

    /// <summary>The golden README's fake model without its division by 1000 (these timesteps are small): eps = 0.1 x + 0.01 t.</summary>
    private static double FakeEps(double x, double t) => 0.1 * x + 0.01 * t;
    private static Tensor FakeModel(Tensor input, Tensor t) => input * 0.1 + 0.01 * t.item<float>();

    /// <summary>Linear betas from <paramref name="betaStart"/> to <paramref name="betaEnd"/> (float32 like diffusers' linspace), their alpha product in doubles.</summary>
    private static double[] AlphaProducts(int trainSteps, double betaStart, double betaEnd)
    {
        var acp = new double[trainSteps];
        double product = 1;
        for (int i = 0; i < trainSteps; i++)
        {
            double beta = (float)(betaStart + (betaEnd - betaStart) * i / (trainSteps - 1));
            product *= 1 - beta;
            acp[i] = product;
        }
        return acp;
    }

    /// <summary>A schedule whose final alpha product (1) differs from alphas_cumprod[0] and whose timesteps reach 0.</summary>
    private static NoiseSchedule Schedule(int trainSteps, double betaStart, double betaEnd) =>
        new(numTrainTimesteps: trainSteps, betaSchedule: "linear", betaStart: betaStart, betaEnd: betaEnd, stepsOffset: 0, setAlphaToOne: true);

    private static Tensor Input => torch.tensor(X); // float64: the samplers then compute in doubles too

    private static void AssertMatches(double[] expected, Tensor actual, string what) =>
        Fixtures.AssertClose(torch.tensor(expected), actual, Tolerance.RelativeToMax(1e-6, 1e-9), what);

    [Fact]
    public void Ddim_steps_into_t0_with_alphas_cumprod_0_and_out_of_it_with_the_final_alpha_1()
    {
        // 10 training steps, 2 inference steps, leading spacing, offset 0: timesteps 5 and 0 (stride 5).
        // t=5 goes to t=0 (alpha product acp[0]); t=0 goes past the table, to the final alpha product (set_alpha_to_one).
        using var scope = torch.NewDisposeScope();
        var acp = AlphaProducts(10, 0.1, 0.5);
        var x = (double[])X.Clone();
        foreach (var (t, aPrev) in new[] { (5, acp[0]), (0, 1.0) })
            for (int k = 0; k < x.Length; k++)
            {   // DDIM eq. 12, eta 0: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps
                double eps = FakeEps(x[k], t), a = acp[t];
                double x0 = (x[k] - Math.Sqrt(1 - a) * eps) / Math.Sqrt(a);
                x[k] = Math.Sqrt(aPrev) * x0 + Math.Sqrt(1 - aPrev) * eps;
            }
        var schedule = Schedule(10, 0.1, 0.5);
        Assert.Equal(new double[] { 5, 0 }, new DdimSampler().Plan(schedule, 2).Timesteps);
        AssertMatches(x, new DdimSampler().Sample(FakeModel, Input, schedule, 2), "DDIM, 2 steps of 10");
    }

    [Fact]
    public void Ddpm_adds_no_noise_at_t0_and_uses_alphas_cumprod_0_before_it()
    {
        using var scope = torch.NewDisposeScope();
        var acp = AlphaProducts(10, 0.1, 0.5);
        double[] draw = [0.5, -1.5, 0.25, 1.0];
        var x = (double[])X.Clone();
        foreach (var (t, aPrev) in new[] { (5, acp[0]), (0, 1.0) })
            for (int k = 0; k < x.Length; k++)
            {   // Ho et al. eq. 7: posterior mean of q(x_prev | x_t, x0), plus sqrt(beta~) z for t > 0
                double a = acp[t], alpha = a / aPrev, beta = 1 - alpha;
                double x0 = (x[k] - Math.Sqrt(1 - a) * FakeEps(x[k], t)) / Math.Sqrt(a);
                double mean = Math.Sqrt(aPrev) * beta / (1 - a) * x0 + Math.Sqrt(alpha) * (1 - aPrev) / (1 - a) * x[k];
                double variance = (1 - aPrev) / (1 - a) * beta;
                x[k] = t > 0 ? mean + Math.Sqrt(variance) * draw[k] : mean;
            }
        var noise = new FixedNoise([torch.tensor(draw)]); // one draw: a draw at t = 0 would find none left
        AssertMatches(x, new DdpmSampler().Sample(FakeModel, Input, Schedule(10, 0.1, 0.5), 2, noise), "DDPM, 2 steps of 10");
        Assert.Equal(1, noise.Used);
    }

    [Fact]
    public void Plms_warm_up_and_its_step_into_t0_follow_pndm()
    {
        // 10 training steps, 5 inference steps (stride 2): timesteps 8 6 4 2 0, model calls at 8 6 6 4 2 0.
        // PNDM with skip_prk_steps: the first step is Euler-like from 8 to 6; the second call (at 6 again) redoes that
        // step from x_8 with the mean of both epsilons; then Adams-Bashforth of orders 2, 3 and 4 over the stored epsilons.
        using var scope = torch.NewDisposeScope();
        var acp = AlphaProducts(10, 0.1, 0.5);
        double Alpha(double t) => t >= 0 ? acp[(int)t] : 1.0;
        double Transfer(double x, double eps, double from, double to)
        {   // PNDM eq. 9 (the phi of its pseudo-numerical method) in diffusers' arrangement
            double a = Alpha(from), aPrev = Alpha(to);
            double denominator = a * Math.Sqrt(1 - aPrev) + Math.Sqrt(a * (1 - a) * aPrev);
            return Math.Sqrt(aPrev / a) * x - (aPrev - a) * eps / denominator;
        }
        var result = new double[X.Length];
        for (int k = 0; k < X.Length; k++)
        {
            double x = X[k];
            double eps8 = FakeEps(x, 8);
            double x6 = Transfer(x, eps8, 8, 6);                       // first call: provisional step
            double eps6 = FakeEps(x6, 6);
            x6 = Transfer(x, (eps8 + eps6) / 2, 8, 6);                 // second call: the corrected step from x_8
            double eps4 = FakeEps(x6, 6);                              // third call, at t = 6, stores its epsilon
            double x4 = Transfer(x6, (3 * eps4 - eps8) / 2, 6, 4);
            double eps2 = FakeEps(x4, 4);
            double x2 = Transfer(x4, (23 * eps2 - 16 * eps4 + 5 * eps8) / 12, 4, 2);
            double eps0 = FakeEps(x2, 2);
            double x0 = Transfer(x2, (55 * eps0 - 59 * eps2 + 37 * eps4 - 9 * eps8) / 24, 2, 0); // into t = 0: acp[0]
            double epsLast = FakeEps(x0, 0);
            result[k] = Transfer(x0, (55 * epsLast - 59 * eps0 + 37 * eps2 - 9 * eps4) / 24, 0, -2); // past it: alpha 1
        }
        var schedule = Schedule(10, 0.1, 0.5);
        Assert.Equal(new double[] { 8, 6, 6, 4, 2, 0 }, new PndmSampler().Plan(schedule, 5).Timesteps);
        AssertMatches(result, new PndmSampler().Sample(FakeModel, Input, schedule, 5), "PLMS, 5 steps of 10");
    }

    /// <summary>
    /// DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, the midpoint form diffusers uses) in the variance-preserving terms of
    /// the paper: alpha_t = sqrt(acp), sigma_t = sqrt(1 - acp), lambda_t = log(alpha_t / sigma_t). The run's timesteps
    /// end at t = 0 (diffusers 0.25). With <paramref name="lowerOrderFinal"/> the last step is first order.
    /// </summary>
    private static double[] DpmSolverReference(double[] acp, int[] timesteps, bool lowerOrderFinal)
    {
        var result = new double[X.Length];
        int n = timesteps.Length;
        var times = timesteps.Append(0).ToArray();
        double Lambda(int t) => Math.Log(Math.Sqrt(acp[t]) / Math.Sqrt(1 - acp[t]));
        for (int k = 0; k < X.Length; k++)
        {
            double x = X[k], previousData = 0;
            for (int i = 0; i < n; i++)
            {
                int s = times[i], t = times[i + 1];
                double data = (x - Math.Sqrt(1 - acp[s]) * FakeEps(x, s)) / Math.Sqrt(acp[s]);  // x0 prediction
                double h = Lambda(t) - Lambda(s), alphaT = Math.Sqrt(acp[t]);
                double D = data;
                if (i > 0 && !(lowerOrderFinal && i == n - 1))
                {
                    double r = (Lambda(s) - Lambda(times[i - 1])) / h;
                    D = data + (data - previousData) / (2 * r);
                }
                x = Math.Sqrt(1 - acp[t]) / Math.Sqrt(1 - acp[s]) * x - alphaT * (Math.Exp(-h) - 1) * D;
                previousData = data;
            }
            result[k] = x;
        }
        return result;
    }

    /// <summary>diffusers' leading spacing for DPM-Solver: steps + 1 points <c>k * (T // (steps + 1))</c>, the last (0) dropped.</summary>
    private static int[] DpmLeadingTimesteps(int trainSteps, int steps) =>
        Enumerable.Range(1, steps).Reverse().Select(k => k * (trainSteps / (steps + 1))).ToArray();

    [Theory]
    [InlineData(10, 3)]   // short: the final step is first order
    [InlineData(100, 14)] // the longest run that still ends with a first-order step
    [InlineData(100, 15)] // from 15 steps on, every step after the first is second order
    public void Dpm_solver_pp_2m_ends_with_a_first_order_step_below_15_steps(int trainSteps, int steps)
    {
        using var scope = torch.NewDisposeScope();
        var acp = AlphaProducts(trainSteps, 0.001 * 100 / trainSteps, 0.3 * 10 / trainSteps);
        var schedule = Schedule(trainSteps, 0.001 * 100 / trainSteps, 0.3 * 10 / trainSteps);
        var timesteps = DpmLeadingTimesteps(trainSteps, steps);
        Assert.Equal(timesteps.Select(t => (double)t), new DpmSolverPlusPlus2MSampler().Plan(schedule, steps).Timesteps);
        var expected = DpmSolverReference(acp, timesteps, lowerOrderFinal: steps < 15);
        AssertMatches(expected, new DpmSolverPlusPlus2MSampler().Sample(FakeModel, Input, schedule, steps), $"DPM++ 2M, {steps} steps of {trainSteps}");
        // The other choice for the last step must be told apart, or this test pins nothing.
        var other = DpmSolverReference(acp, timesteps, lowerOrderFinal: steps >= 15);
        Assert.True(expected.Zip(other).Max(p => Math.Abs(p.First - p.Second)) > 1e-4 * expected.Max(Math.Abs),
            "the first- and second-order final steps are indistinguishable on this schedule");
    }
}
