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
}
