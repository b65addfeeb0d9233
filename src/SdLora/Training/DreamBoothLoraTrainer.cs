using static TorchSharp.torch;

namespace SdLora.Training;

/// <summary>
/// The one-call form of a training run: loads <see cref="TrainingConfig.Model"/>, trains, disposes it. A host that
/// already holds a loaded model (a server) creates a <see cref="LoraTrainingSession"/> with it instead.
/// </summary>
public sealed class DreamBoothLoraTrainer
{
    public TrainingConfig Config { get; }
    private readonly Func<CpuKernelProbeResult>? _cpuProbe;

    /// <param name="config">The run's settings; checked at once.</param>
    /// <param name="cpuProbe">
    /// How <c>dtype auto</c> (and CPU bf16) learn this CPU's bf16 speed, e.g. a cached probe
    /// (<see cref="CpuKernelProbeCache"/>); null measures afresh with <see cref="CpuKernelProbe.Measure"/> when needed.
    /// </param>
    public DreamBoothLoraTrainer(TrainingConfig config, Func<CpuKernelProbeResult>? cpuProbe = null)
    {
        Config = config.Validate();
        _cpuProbe = cpuProbe;
    }

    /// <summary>See <see cref="LoraTrainingSession.Run"/>.</summary>
    public TrainingResult Train(IProgress<TrainingProgress>? progress = null, CancellationToken ct = default) =>
        new LoraTrainingSession(Config) { CpuProbe = _cpuProbe }.Run(progress, ct);

    /// <summary>See <see cref="LoraTrainingSession.DrawNoise"/>.</summary>
    public static (Tensor Noise, Tensor Timesteps) DrawNoise(TrainingConfig c, int epoch, int batch, long[] shape, int numTrainTimesteps) =>
        LoraTrainingSession.DrawNoise(c, epoch, batch, shape, numTrainTimesteps);
}
