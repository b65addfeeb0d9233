namespace SdLora.Sampling;

/// <summary>Timestep and sigma schedules shared by several samplers (diffusers' <c>set_timesteps</c>).</summary>
public static class SamplerPlans
{
    /// <summary>DDIM/DDPM: integer timesteps, no sigmas, noise used as is.</summary>
    public static SamplerPlan Discrete(NoiseSchedule schedule, int steps) =>
        new(schedule.SpacedTimesteps(steps), null, 1.0);

    /// <summary>
    /// Euler/LMS/Heun: timesteps per the spacing (fractional for linspace), sigma = the schedule's sigma at
    /// each timestep plus a final 0, and an initial noise scale of sqrt(sigma_max^2 + 1) (leading) or sigma_max.
    /// </summary>
    public static SamplerPlan KDiffusion(NoiseSchedule schedule, int steps)
    {
        var timesteps = schedule.SpacedTimesteps(steps, round: false);
        var sigmas = timesteps.Select(t => (double)(float)schedule.SigmaAt(t)).Append(0.0).ToArray();
        float max = (float)sigmas.Max();
        double init = schedule.TimestepSpacing == "leading" ? MathF.Sqrt(max * max + 1) : max;
        return new(timesteps, sigmas, init);
    }

    /// <summary>
    /// DPM-Solver: diffusers spaces steps+1 points and drops the last for leading/linspace; the sigma list
    /// ends at sigma(t=0) rather than 0 (diffusers 0.25 behaviour).
    /// </summary>
    public static SamplerPlan DpmSolver(NoiseSchedule schedule, int steps)
    {
        var timesteps = schedule.TimestepSpacing == "trailing" ? schedule.SpacedTimesteps(steps) : schedule.SpacedTimesteps(steps + 1)[..^1];
        var sigmas = timesteps.Append(0).Select(t => (double)(float)schedule.SigmaAt(t)).ToArray();
        return new(timesteps, sigmas, 1.0);
    }

    /// <summary>
    /// Karras et al. (2022) sigmas, rho = 7, between the schedule's smallest and largest sigma; each model
    /// call uses the rounded timestep of its sigma. The last sigma repeats (diffusers 0.25 DPM behaviour).
    /// </summary>
    public static SamplerPlan Karras(NoiseSchedule schedule, int steps)
    {
        const double rho = 7.0;
        double minInv = Math.Pow(schedule.SigmaAt(0), 1 / rho), maxInv = Math.Pow(schedule.SigmaAt(schedule.NumTrainTimesteps - 1), 1 / rho);
        var karras = Enumerable.Range(0, steps)
            .Select(i => Math.Pow(maxInv + (steps == 1 ? 0 : (double)i / (steps - 1)) * (minInv - maxInv), rho)).ToArray();
        var timesteps = karras.Select(s => Math.Round(schedule.TimestepOf(s), MidpointRounding.ToEven)).ToArray();
        var sigmas = karras.Append(karras[^1]).Select(s => (double)(float)s).ToArray();
        return new(timesteps, sigmas, 1.0);
    }
}
