using SdLora.Cli;

// One context for the whole run: console (terminal or plain), the Ctrl-C token, progress, --threads.
using var cli = CliContext.ForProcess();
return await SdLoraCli.RunAsync(args, cli);
