using static TorchSharp.torch;

namespace SdLora.Sampling;

/// <summary>
/// DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in data-prediction form: exponential integrator in
/// lambda = -log(sigma), second order from the previous step's denoised estimate (first step first order).
/// Works on the variance-preserving latents like diffusers' DPMSolverMultistepScheduler.
/// </summary>
public sealed class DpmSolverPlusPlus2MSampler : Sampler
{
    public bool UseKarrasSigmas { get; }
    public DpmSolverPlusPlus2MSampler(bool useKarrasSigmas = false) => UseKarrasSigmas = useKarrasSigmas;

    public override string Name => UseKarrasSigmas ? "DPM++ 2M Karras" : "DPM++ 2M";
    public override string ShortName => UseKarrasSigmas ? "dpmpp_2m_karras" : "dpmpp_2m";
    public override SamplerPlan Plan(NoiseSchedule schedule, int steps) =>
        UseKarrasSigmas ? SamplerPlans.Karras(schedule, steps) : SamplerPlans.DpmSolver(schedule, steps);

    /// <summary>
    /// One step from sigma to sigmaNext (k-diffusion sigmas; x = x0 + sigma eps scaled by alpha = 1/sqrt(1+sigma^2)).
    /// Without <paramref name="previousDenoised"/> it is DPM-Solver++(1), i.e. DDIM.
    /// </summary>
    public static Tensor Step(Tensor x, Tensor denoised, Tensor? previousDenoised, double sigmaPrevious, double sigma, double sigmaNext)
    {
        double alpha = 1 / Math.Sqrt(1 + sigma * sigma), alphaNext = 1 / Math.Sqrt(1 + sigmaNext * sigmaNext);
        double h = Math.Log(sigma / sigmaNext);
        var d = previousDenoised is null ? denoised
            : denoised + (denoised - previousDenoised) * (0.5 * h / Math.Log(sigmaPrevious / sigma));
        return x * (sigmaNext * alphaNext / (sigma * alpha)) - d * (alphaNext * (Math.Exp(-h) - 1));
    }

    protected override Tensor Run(SamplingRun run, Tensor x)
    {
        var sigmas = run.Sigmas;
        int n = run.Timesteps.Count;
        Tensor? previous = null;
        for (int i = 0; i < n; i++)
        {
            using var scope = NewDisposeScope();
            double sigma = sigmas[i];
            var (denoised, _) = run.Predict(x, run.Model(x, run.Timesteps[i]), 1 / (1 + sigma * sigma));
            // diffusers' lower_order_final: short runs end with a first-order step for stability
            bool firstOrder = previous is null || (i == n - 1 && n < 15);
            var next = Step(x, denoised, firstOrder ? null : previous, i > 0 ? sigmas[i - 1] : sigma, sigma, sigmas[i + 1]);
            run.Report(next, denoised);
            x = SamplingRun.Replace(x, next);
            previous = SamplingRun.Replace(previous, denoised);
        }
        previous?.Dispose();
        return x;
    }
}
