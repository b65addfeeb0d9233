using Xunit;

namespace SdLora.Tests;

/// <summary>The process-wide settings a host (CLI, web server) applies at start, and the user's way to keep their own.</summary>
public class HostSettingsTests
{
    [Fact]
    public void Malloc_tuning_applies_on_glibc_unless_the_user_tunes_malloc_through_the_environment()
    {
        bool userTuned = Environment.GetEnvironmentVariables().Keys.Cast<string>().Any(k => k.StartsWith("MALLOC_", StringComparison.Ordinal))
            || Environment.GetEnvironmentVariable("GLIBC_TUNABLES") is not null;
        Assert.Equal(OperatingSystem.IsLinux() && !userTuned, MallocTuning.ApplyForTensorWork());
        if (userTuned) return;
        Environment.SetEnvironmentVariable("MALLOC_TOP_PAD_", "1048576");
        try { Assert.False(MallocTuning.ApplyForTensorWork()); }
        finally { Environment.SetEnvironmentVariable("MALLOC_TOP_PAD_", null); }
    }

    [Fact]
    public void Libtorch_warnings_are_quieted_unless_the_user_set_its_log_level()
    {
        bool userSet = Environment.GetEnvironmentVariable("TORCH_CPP_LOG_LEVEL") is not null;
        Assert.Equal(!userSet, LibTorchLog.QuietWarnings());
        if (userSet) return;
        Environment.SetEnvironmentVariable("TORCH_CPP_LOG_LEVEL", "WARNING");
        try { Assert.False(LibTorchLog.QuietWarnings()); }
        finally { Environment.SetEnvironmentVariable("TORCH_CPP_LOG_LEVEL", null); }
    }
}
