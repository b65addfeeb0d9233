using System.Runtime.InteropServices;

namespace SdLora;

/// <summary>
/// How libtorch's OpenMP worker threads wait between parallel regions, for a host (the CLI, the web server) to choose
/// once at start, before libtorch is loaded: the library itself never changes process-wide settings.
/// <para>
/// By default GNU OpenMP spins a while before a waiting thread sleeps. Alone on a machine that saves a wake-up per
/// operation (the toy model's training step: 1.71 steps/s spinning, 1.62 sleeping); beside other torch work (a second
/// job in the web UI, a test run) the spinning threads take the cores the working ones need (the same step at 0.17
/// steps/s beside a test run, 2 cores). So <c>sdlora serve</c> sets it; one-shot CLI commands keep libgomp's default.
/// </para>
/// </summary>
public static partial class OpenMpWaitPolicy
{
    public const string Variable = "OMP_WAIT_POLICY";

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    /// <summary>
    /// Makes waiting OpenMP threads sleep (<c>OMP_WAIT_POLICY=PASSIVE</c>) unless the user set the policy, which then
    /// wins. Returns whether it was set here: false on other systems, when the user chose, or when libc refuses. Only
    /// effective before libtorch (and with it libgomp) is loaded, which reads the variable once.
    /// </summary>
    public static bool PreferPassive()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable(Variable) is not null) return false;
        try
        {
            // The runtime's managed environment is not the C library's: getenv in libgomp sees only what setenv wrote.
            if (SetEnv(Variable, "PASSIVE", 0) != 0) return false;
            Environment.SetEnvironmentVariable(Variable, "PASSIVE");
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }
}
