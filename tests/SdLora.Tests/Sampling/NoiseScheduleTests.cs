using SdLora.Sampling;
using TorchSharp;
using Xunit;

namespace SdLora.Tests.Sampling;

public sealed class NoiseScheduleTests
{
    [Fact]
    public void Sd15_scheduler_config_gives_the_sd15_schedule()
    {
        var s = SchedulerGoldenTests.Sd15Schedule();
        Assert.Equal((1000, "scaled_linear", "leading", 1, false, PredictionType.Epsilon),
            (s.NumTrainTimesteps, s.BetaSchedule, s.TimestepSpacing, s.StepsOffset, s.SetAlphaToOne, s.PredictionType));
        Assert.Equal(s.AlphaCumprodAt(0), s.FinalAlphaCumprod);
        Assert.Equal(14.6146, s.SigmaAt(999), 1e-4);
    }

    [Fact]
    public void V_prediction_and_linear_betas_are_read()
    {
        var s = NoiseSchedule.FromSchedulerConfigJson("""{"beta_schedule": "linear", "prediction_type": "v_prediction", "timestep_spacing": "trailing"}""");
        Assert.Equal(PredictionType.VPrediction, s.PredictionType);
        Assert.Equal(0.00085, s.Betas[0].item<float>(), 1e-9);
        Assert.Equal(0.012, s.Betas[999].item<float>(), 1e-9);
        Assert.Equal(new double[] { 999, 749, 499, 249 }, s.SpacedTimesteps(4));
    }

    [Theory]
    [InlineData("{not json", "model/scheduler/scheduler_config.json: not valid JSON")]
    [InlineData("""{"beta_schedule": "squaredcos_cap_v2"}""", "model/scheduler/scheduler_config.json: unsupported beta_schedule 'squaredcos_cap_v2': use scaled_linear (SD1.x) or linear")]
    [InlineData("""{"prediction_type": "sample"}""", "model/scheduler/scheduler_config.json: prediction_type 'sample' is not supported: use epsilon or v_prediction")]
    [InlineData("""{"num_train_timesteps": "many"}""", "model/scheduler/scheduler_config.json: 'num_train_timesteps' has an unexpected value \"many\"; fix the scheduler config")]
    public void Bad_scheduler_config_names_the_file_and_the_problem(string json, string expectedStart)
    {
        var e = Assert.Throws<SdLoraException>(() => NoiseSchedule.FromSchedulerConfigJson(json, "model/scheduler/scheduler_config.json"));
        Assert.StartsWith(expectedStart, e.Message);
    }
    [Fact]
    public void Scheduler_config_keys_set_the_schedule()
    {
        var s = NoiseSchedule.FromSchedulerConfigJson("""{"num_train_timesteps": 10, "beta_schedule": "linear", "beta_start": 0.1, "beta_end": 0.5}""");
        Assert.Equal(10, s.NumTrainTimesteps);
        Assert.Equal(0.1, s.Betas[0].item<float>(), 1e-7);
        Assert.Equal(0.5, s.Betas[9].item<float>(), 1e-7);
        Assert.Equal(0.1 + 0.4 * 4 / 9, s.Betas[4].item<float>(), 1e-7);
        // diffusers' defaults for keys a config leaves out: set_alpha_to_one True, steps_offset 0
        Assert.True(s.SetAlphaToOne);
        Assert.Equal(1.0, s.FinalAlphaCumprod);
        Assert.Equal(0, s.StepsOffset);
    }

    [Fact]
    public void Empty_scheduler_config_gives_diffusers_defaults()
    {
        var s = NoiseSchedule.FromSchedulerConfigJson("{}");
        Assert.Equal((1000, "scaled_linear", 0.00085, 0.012, PredictionType.Epsilon, "leading", 0, true),
            (s.NumTrainTimesteps, s.BetaSchedule, s.BetaStart, s.BetaEnd, s.PredictionType, s.TimestepSpacing, s.StepsOffset, s.SetAlphaToOne));
        Assert.Equal(0.012, s.Betas[999].item<float>(), 1e-9);
    }

    [Fact]
    public void Trained_betas_replace_the_beta_schedule()
    {
        var s = NoiseSchedule.FromSchedulerConfigJson("""{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2, 0.3], "beta_schedule": "linear"}""");
        Assert.Equal(0.9, s.AlphaCumprodAt(0), 1e-7);
        Assert.Equal(0.9 * 0.8, s.AlphaCumprodAt(1), 1e-7);
        Assert.Equal(0.9 * 0.8 * 0.7, s.AlphaCumprodAt(2), 1e-7);
    }

    [Theory]
    [InlineData("""[1, 2]""", "cfg.json: expected a JSON object; fix or re-download the scheduler config")]
    [InlineData("""{"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, 0.3]}""", "cfg.json: trained_betas has 3 values but num_train_timesteps is 4: make them agree")]
    [InlineData("""{"timestep_spacing": "karras"}""", "cfg.json: unknown timestep_spacing 'karras': use leading, trailing or linspace")]
    [InlineData("""{"num_train_timesteps": 1}""", "cfg.json: num_train_timesteps 1 is too small: use at least 2 (SD1.x: 1000)")]
    public void Inconsistent_scheduler_config_is_refused_with_the_fix(string json, string expected)
    {
        var e = Assert.Throws<SdLoraException>(() => NoiseSchedule.FromSchedulerConfigJson(json, "cfg.json"));
        Assert.Equal(expected, e.Message);
    }

    [Theory]
    [InlineData("leading")]
    [InlineData("trailing")]
    [InlineData("linspace")]
    public void The_three_diffusers_spacings_are_accepted_down_to_two_training_steps(string spacing)
    {
        var s = new NoiseSchedule(numTrainTimesteps: 2, betaSchedule: "linear", betaStart: 0.1, betaEnd: 0.2, timestepSpacing: spacing);
        Assert.Equal(spacing, s.TimestepSpacing);
        Assert.Equal(0.9 * 0.8, s.AlphaCumprodAt(1), 1e-7);
    }
}
