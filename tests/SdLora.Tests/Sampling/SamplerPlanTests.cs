using SdLora.Sampling;
using TorchSharp;
using Xunit;

namespace SdLora.Tests.Sampling;

/// <summary>
/// Schedule lookups and plan options the golden sequences (SD1.5, leading spacing, 20 steps) never reach: sigma between
/// table entries, linspace and trailing spacing, a one-step Karras plan. Expectations are diffusers' documented formulas
/// (numpy's linspace/arange, rounded half to even) evaluated here in doubles.
/// </summary>
public sealed class SamplerPlanTests
{
    /// <summary>sqrt((1 - acp) / acp) for SD1.x's scaled-linear betas (float32 like diffusers), the alpha product in doubles.</summary>
    private static double[] Sd15Sigmas()
    {
        var sigmas = new double[1000];
        double product = 1, root0 = Math.Sqrt(0.00085), root1 = Math.Sqrt(0.012);
        for (int i = 0; i < 1000; i++)
        {
            float root = (float)(root0 + (root1 - root0) * i / 999);
            product *= 1 - (double)(root * root);
            sigmas[i] = Math.Sqrt((1 - product) / product);
        }
        return sigmas;
    }

    // float32 tables against doubles: a thousand float32 products drift by up to a few 1e-6 relative
    private static readonly Tolerance TableTol = Tolerance.RelativeToMax(2e-5);

    [Theory]
    [InlineData(500.25)]
    [InlineData(17.5)]
    [InlineData(998.9)]
    public void Sigma_between_timesteps_is_interpolated_linearly_like_np_interp(double t)
    {
        var sigmas = Sd15Sigmas();
        int lo = (int)Math.Floor(t);
        double expected = sigmas[lo] + (t - lo) * (sigmas[lo + 1] - sigmas[lo]);
        var schedule = new NoiseSchedule();
        Fixtures.AssertClose(expected, schedule.SigmaAt(t), TableTol, $"sigma({t})");
        // The step between neighbours is far above the tolerance, so a wrong neighbour or weight fails.
        Assert.True(Math.Abs(sigmas[lo + 1] - sigmas[lo]) * 0.1 > TableTol.Allowed(expected));
    }

    [Fact]
    public void Sigma_outside_the_table_is_the_end_value()
    {
        var sigmas = Sd15Sigmas();
        var schedule = new NoiseSchedule();
        Fixtures.AssertClose(sigmas[0], schedule.SigmaAt(-3), TableTol, "sigma(-3)");
        Fixtures.AssertClose(sigmas[999], schedule.SigmaAt(1200), TableTol, "sigma(1200)");
    }

    [Fact]
    public void Linspace_spacing_rounds_half_to_even_for_integer_samplers_and_keeps_fractions_for_euler()
    {
        // np.linspace(0, 999, 7) = 0, 166.5, 333, 499.5, 666, 832.5, 999, reversed; .round() is half to even.
        var schedule = new NoiseSchedule(timestepSpacing: "linspace");
        Assert.Equal(new double[] { 999, 832, 666, 500, 333, 166, 0 }, schedule.SpacedTimesteps(7));
        Assert.Equal(new double[] { 999, 832.5, 666, 499.5, 333, 166.5, 0 }, schedule.SpacedTimesteps(7, round: false));
        Assert.Equal(new double[] { 0 }, schedule.SpacedTimesteps(1)); // np.linspace(0, 999, 1) = [0]
        Assert.Equal(new double[] { 999, 832.5, 666, 499.5, 333, 166.5, 0 }, new EulerSampler().Plan(schedule, 7).Timesteps);
    }

    [Theory]
    [InlineData("linspace")]
    [InlineData("trailing")]
    public void Euler_starts_at_sigma_max_unless_spacing_is_leading(string spacing)
    {
        // diffusers' init_noise_sigma: max(sigmas) for linspace/trailing, sqrt(max^2 + 1) for leading.
        double sigmaMax = Sd15Sigmas()[999];
        var plan = new EulerSampler().Plan(new NoiseSchedule(timestepSpacing: spacing), 10);
        Fixtures.AssertClose(sigmaMax, plan.InitNoiseSigma, TableTol, $"{spacing} init_noise_sigma");
        var leading = new EulerSampler().Plan(new NoiseSchedule(timestepSpacing: "leading", stepsOffset: 0), 1);
        double firstSigma = Sd15Sigmas()[0]; // leading with one step and offset 0: t = 0
        Fixtures.AssertClose(Math.Sqrt(firstSigma * firstSigma + 1), leading.InitNoiseSigma, TableTol, "leading init_noise_sigma");
    }

    [Fact]
    public void Dpm_solver_with_trailing_spacing_uses_steps_points_ending_at_T()
    {
        // np.arange(1000, 0, -1000 / 4).round() - 1 = 999, 749, 499, 249; sigmas of those, then sigma(0).
        var schedule = new NoiseSchedule(timestepSpacing: "trailing");
        var plan = new DpmSolverPlusPlus2MSampler().Plan(schedule, 4);
        Assert.Equal(new double[] { 999, 749, 499, 249 }, plan.Timesteps);
        var sigmas = Sd15Sigmas();
        double[] expected = [sigmas[999], sigmas[749], sigmas[499], sigmas[249], sigmas[0]];
        Fixtures.AssertClose(torch.tensor(expected), torch.tensor(plan.Sigmas!.ToArray()), TableTol, "trailing DPM sigmas");
    }

    [Fact]
    public void One_step_karras_plan_is_sigma_max_at_the_last_training_step()
    {
        // Karras et al. eq. 5 with N = 1: np.linspace(0, 1, 1) = [0], so the one sigma is sigma_max; diffusers repeats it.
        var plan = new DpmSolverPlusPlus2MSampler(useKarrasSigmas: true).Plan(new NoiseSchedule(), 1);
        double sigmaMax = Sd15Sigmas()[999];
        Assert.Equal(new double[] { 999 }, plan.Timesteps);
        Assert.Equal(2, plan.Sigmas!.Count);
        Fixtures.AssertClose(sigmaMax, plan.Sigmas[0], TableTol, "karras sigma 0");
        Fixtures.AssertClose(sigmaMax, plan.Sigmas[1], TableTol, "karras sigma 1");
    }

    [Fact]
    public void Karras_plan_follows_eq_5_between_the_table_ends()
    {
        // sigma_i = (max^(1/7) + i / (N - 1) (min^(1/7) - max^(1/7)))^7
        var sigmas = Sd15Sigmas();
        const int n = 6;
        double maxInv = Math.Pow(sigmas[999], 1 / 7.0), minInv = Math.Pow(sigmas[0], 1 / 7.0);
        var expected = Enumerable.Range(0, n).Select(i => Math.Pow(maxInv + i / (n - 1.0) * (minInv - maxInv), 7)).ToList();
        expected.Add(expected[^1]);
        var plan = new DpmSolverPlusPlus2MSampler(useKarrasSigmas: true).Plan(new NoiseSchedule(), n);
        Fixtures.AssertClose(torch.tensor(expected.ToArray()), torch.tensor(plan.Sigmas!.ToArray()), TableTol, "karras sigmas");
    }
}
