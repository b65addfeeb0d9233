using SdLora.Training;
using Xunit;

namespace SdLora.Tests.Training;

/// <summary>Values from diffusers' get_scheduler formulas, computed by hand (python) for the listed steps.</summary>
public class LrScheduleTests
{
    [Theory]
    [InlineData("constant", 0, 1.0)]
    [InlineData("constant", 99, 1.0)]
    [InlineData("constant_with_warmup", 0, 0.0)]
    [InlineData("constant_with_warmup", 5, 0.5)]
    [InlineData("constant_with_warmup", 10, 1.0)]
    [InlineData("linear", 5, 0.5)]
    [InlineData("linear", 10, 1.0)]
    [InlineData("linear", 55, 0.5)]
    [InlineData("linear", 100, 0.0)]
    [InlineData("cosine", 5, 0.5)]
    [InlineData("cosine", 10, 1.0)]
    [InlineData("cosine", 55, 0.5)]
    [InlineData("cosine", 100, 0.0)]
    [InlineData("polynomial", 50, 0.30933333333333335)]
    [InlineData("polynomial", 100, 0.001)]
    [InlineData("polynomial", 101, 0.001)]
    public void Schedules_match_diffusers_with_10_warmup_of_100(string name, int step, double expected)
    {
        var s = new LrSchedule(name, TotalSteps: 100, WarmupSteps: 10, Power: 2.0, BaseLr: 1e-4, EndLr: 1e-7);
        Assert.Equal(expected, s.Multiplier(step), 9);
    }

    [Theory]
    [InlineData(30, 0.34549150281252633)]
    [InlineData(50, 1.0)]
    [InlineData(60, 0.9045084971874737)]
    [InlineData(100, 0.0)]
    public void Cosine_with_restarts_restarts_each_cycle(int step, double expected)
    {
        var s = new LrSchedule("cosine_with_restarts", TotalSteps: 100, WarmupSteps: 0, NumCycles: 2);
        Assert.Equal(expected, s.Multiplier(step), 9);
    }

    [Fact]
    public void Schedule_from_config_uses_warmup_ratio()
    {
        var c = new TrainingConfig { LrScheduler = "linear", LrWarmupSteps = 0.2 };
        var s = LrSchedule.FromConfig(c, 50);
        Assert.Equal(10, s.WarmupSteps);
        Assert.Equal(0.5, s.Multiplier(5), 9);
    }
}
