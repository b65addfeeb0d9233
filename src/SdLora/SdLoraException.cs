namespace SdLora;

/// <summary>
/// An error the user can cause and fix (a missing file, a malformed checkpoint, a bad option).
/// The message is one line that names the file or value and says what to do; the CLI prints it
/// without a stack trace and exits with <see cref="ExitCode"/>.
/// </summary>
public sealed class SdLoraException : Exception
{
    public SdLoraException(string message, Exception? inner = null) : base(message, inner) { }

    /// <summary>The setting the message is about (e.g. <c>learning-rate</c>), when it is about one: a form can mark that field.</summary>
    public string? Setting { get; init; }

    /// <summary>Process exit code the CLI uses for user errors.</summary>
    public const int ExitCode = 2;
}
