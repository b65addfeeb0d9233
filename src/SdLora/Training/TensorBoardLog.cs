using TorchSharp;

namespace SdLora.Training;

/// <summary>Optional TensorBoard scalars (loss, smoothed loss, LR) through TorchSharp's SummaryWriter, under <c>&lt;output&gt;/logs</c>.</summary>
public sealed class TensorBoardLog : IDisposable
{
    private readonly TorchSharp.Modules.SummaryWriter _writer;
    public string Directory { get; }

    public TensorBoardLog(string directory)
    {
        Directory = directory;
        System.IO.Directory.CreateDirectory(directory);
        _writer = torch.utils.tensorboard.SummaryWriter(directory, createRunName: false);
    }

    public void Write(LossRow row)
    {
        _writer.add_scalar("loss/current", (float)row.Loss, row.Step);
        _writer.add_scalar("loss/average", (float)row.SmoothedLoss, row.Step);
        _writer.add_scalar("lr", (float)row.Lr, row.Step);
    }

    public void Dispose() { }
}
