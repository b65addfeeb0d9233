using System.Runtime.InteropServices;
using TorchSharp;

namespace SdLora;

/// <summary>
/// libtorch's own C++ log (c10's <c>LOG(WARNING)</c>), for a host (the CLI, the web server) to quiet once at start:
/// the library itself never changes process-wide settings.
/// <para>
/// On CPUs that NNPACK does not support (AMD EPYC, for one) libtorch logs "Could not initialize NNPACK! Reason:
/// Unsupported hardware." on every batched fp32 convolution: measured, 102,804 lines on standard error in one
/// <c>sdlora demo</c>, burying its output. Nothing in that log is for a user of sdlora, so it is cut to errors.
/// A user who sets <c>TORCH_CPP_LOG_LEVEL</c> keeps their choice.
/// </para>
/// </summary>
public static class LibTorchLog
{
    private const int ErrorLevel = 2; // c10::GLOG_ERROR

    /// <summary>Raises libtorch's log threshold to errors; returns whether it took effect.</summary>
    public static bool QuietWarnings()
    {
        if (Environment.GetEnvironmentVariable("TORCH_CPP_LOG_LEVEL") is not null) return false;
        try
        {
            // Loads libtorch (and its c10) the way TorchSharp does, so that the name below finds that same copy.
            torch.InitializeDeviceType(DeviceType.CPU);
            string c10 = OperatingSystem.IsWindows() ? "c10.dll" : OperatingSystem.IsMacOS() ? "libc10.dylib" : "libc10.so";
            if (!NativeLibrary.TryLoad(c10, typeof(torch).Assembly, null, out var library) ||
                !NativeLibrary.TryGetExport(library, "FLAGS_caffe2_log_level", out var level))
                return false;
            if (Marshal.ReadInt32(level) < ErrorLevel) Marshal.WriteInt32(level, ErrorLevel);
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or NotSupportedException)
        {
            return false;
        }
    }
}
