using static TorchSharp.torch;

namespace SdLora.Training;

/// <summary>
/// The one-call form of a training run: loads <see cref="TrainingConfig.Model"/>, trains, disposes it. A host that
/// already holds a loaded model (a server) creates a <see cref="LoraTrainingSession"/> with it instead.
/// </summary>
public sealed class DreamBoothLoraTrainer
{
    public TrainingConfig Config { get; }

    public DreamBoothLoraTrainer(TrainingConfig config) => Config = config.Validate();

    /// <summary>See <see cref="LoraTrainingSession.Run"/>.</summary>
    public TrainingResult Train(IProgress<TrainingProgress>? progress = null, CancellationToken ct = default) =>
        new LoraTrainingSession(Config).Run(progress, ct);

    /// <summary>See <see cref="LoraTrainingSession.DrawNoise"/>.</summary>
    public static (Tensor Noise, Tensor Timesteps) DrawNoise(TrainingConfig c, int epoch, int batch, long[] shape, int numTrainTimesteps) =>
        LoraTrainingSession.DrawNoise(c, epoch, batch, shape, numTrainTimesteps);
}
