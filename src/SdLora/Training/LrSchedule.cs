namespace SdLora.Training;

/// <summary>
/// Learning-rate schedules as pure functions of the optimizer step (0-based), with diffusers'
/// <c>get_scheduler</c> formulas (which kohya uses): the multiplier applies to every group's base LR.
/// </summary>
public sealed record LrSchedule(string Name, int TotalSteps, int WarmupSteps = 0, int NumCycles = 1, double Power = 1.0,
    double BaseLr = 1e-4, double EndLr = 1e-7)
{
    public static LrSchedule FromConfig(TrainingConfig c, int totalSteps) =>
        new(c.LrScheduler, totalSteps, c.WarmupSteps(totalSteps), c.LrSchedulerNumCycles, c.LrSchedulerPower, c.LearningRate);

    /// <summary>LR multiplier for optimizer step <paramref name="step"/>.</summary>
    public double Multiplier(int step)
    {
        if (Name == "constant") return 1.0;
        if (step < WarmupSteps) return (double)step / Math.Max(1, WarmupSteps);
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        switch (Name)
        {
            case "constant_with_warmup":
                return 1.0;
            case "linear":
                return Math.Max(0.0, (double)(TotalSteps - step) / Math.Max(1, TotalSteps - WarmupSteps));
            case "cosine":
                // diffusers' default num_cycles = 0.5: one half-cosine from 1 down to 0.
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * progress)));
            case "cosine_with_restarts":
                if (progress >= 1.0) return 0.0;
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * (NumCycles * progress % 1.0))));
            case "polynomial":
                if (step > TotalSteps) return EndLr / BaseLr;
                double remaining = 1.0 - (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
                return ((BaseLr - EndLr) * Math.Pow(remaining, Power) + EndLr) / BaseLr;
            default:
                throw new SdLoraException($"lr-scheduler '{Name}' is not supported: use {string.Join(", ", TrainingConfig.Schedulers)}");
        }
    }
}
