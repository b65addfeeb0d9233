using System.Runtime.InteropServices;
using Xunit;

namespace SdLora.Tests;

/// <summary>The process-wide settings a host (CLI, web server) applies at start, and the user's way to keep their own.</summary>
public class HostSettingsTests
{
    [DllImport("libc", EntryPoint = "getenv")]
    private static extern IntPtr GetEnv([MarshalAs(UnmanagedType.LPUTF8Str)] string name);

    private static string? NativeEnv(string name) => Marshal.PtrToStringUTF8(GetEnv(name));

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

    [Fact]
    public void OpenMP_threads_sleep_while_waiting_unless_the_user_chose_a_wait_policy()
    {
        var userSet = Environment.GetEnvironmentVariable(OpenMpWaitPolicy.Variable);
        if (userSet is not null)
        {
            // The user's choice (CI sets PASSIVE itself) stays, in the runtime's environment and the C library's.
            Assert.False(OpenMpWaitPolicy.PreferPassive());
            Assert.Equal(userSet, Environment.GetEnvironmentVariable(OpenMpWaitPolicy.Variable));
            if (OperatingSystem.IsLinux()) Assert.Equal(userSet, NativeEnv(OpenMpWaitPolicy.Variable));
            return;
        }
        try
        {
            Assert.Equal(OperatingSystem.IsLinux(), OpenMpWaitPolicy.PreferPassive());
            if (!OperatingSystem.IsLinux()) return;
            Assert.Equal("PASSIVE", NativeEnv(OpenMpWaitPolicy.Variable)); // what libgomp reads when it loads
            Assert.False(OpenMpWaitPolicy.PreferPassive()); // now set: left alone
        }
        finally { Environment.SetEnvironmentVariable(OpenMpWaitPolicy.Variable, null); }
    }
}
