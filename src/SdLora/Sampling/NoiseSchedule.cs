using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Sampling;

public enum PredictionType { Epsilon, VPrediction }

/// <summary>
/// The DDPM forward process of SD1.x: betas over the training timesteps, their cumulative alpha product
/// and the derived sigmas, plus the inference-time settings (timestep spacing, offset) that a
/// diffusers <c>scheduler_config.json</c> carries. Tables are float32 on the CPU, computed the way the
/// reference does (float32 linspace, squared, cumulative product) so they agree bit for bit.
/// </summary>
public sealed class NoiseSchedule
{
    public int NumTrainTimesteps { get; }
    public string BetaSchedule { get; }
    public double BetaStart { get; }
    public double BetaEnd { get; }
    public PredictionType PredictionType { get; }
    /// <summary><c>leading</c> (SD1.5), <c>trailing</c> or <c>linspace</c>.</summary>
    public string TimestepSpacing { get; }
    public int StepsOffset { get; }
    /// <summary>When false (SD1.5) DDIM/PNDM's last step lands on <c>alphas_cumprod[0]</c> instead of 1.</summary>
    public bool SetAlphaToOne { get; }

    /// <summary>[T] float32.</summary>
    public Tensor Betas { get; }
    /// <summary>[T] float32: prod(1 - beta) up to each t.</summary>
    public Tensor AlphasCumprod { get; }
    /// <summary>[T] float32: sqrt((1 - acp) / acp), the noise level of each timestep in k-diffusion's terms.</summary>
    public Tensor Sigmas { get; }

    private readonly double[] _acp;
    private readonly double[] _sigmas;

    /// <summary>SD1.x's schedule as shipped in its scheduler_config.json.</summary>
    public static NoiseSchedule StableDiffusion1 { get; } = new();

    public NoiseSchedule(int numTrainTimesteps = 1000, string betaSchedule = "scaled_linear", double betaStart = 0.00085,
        double betaEnd = 0.012, PredictionType predictionType = PredictionType.Epsilon, string timestepSpacing = "leading",
        int stepsOffset = 1, bool setAlphaToOne = false, float[]? trainedBetas = null)
    {
        if (numTrainTimesteps < 2) throw new SdLoraException($"num_train_timesteps {numTrainTimesteps} is too small: use at least 2 (SD1.x: 1000)");
        if (timestepSpacing is not ("leading" or "trailing" or "linspace"))
            throw new SdLoraException($"unknown timestep_spacing '{timestepSpacing}': use leading, trailing or linspace");
        NumTrainTimesteps = numTrainTimesteps; BetaSchedule = betaSchedule; BetaStart = betaStart; BetaEnd = betaEnd;
        PredictionType = predictionType; TimestepSpacing = timestepSpacing; StepsOffset = stepsOffset; SetAlphaToOne = setAlphaToOne;

        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Tensor betas = trainedBetas != null ? torch.tensor(trainedBetas)
            : betaSchedule switch
            {
                "scaled_linear" => torch.linspace(Math.Sqrt(betaStart), Math.Sqrt(betaEnd), numTrainTimesteps, ScalarType.Float32).pow(2),
                "linear" => torch.linspace(betaStart, betaEnd, numTrainTimesteps, ScalarType.Float32),
                _ => throw new SdLoraException($"unsupported beta_schedule '{betaSchedule}': use scaled_linear (SD1.x) or linear"),
            };
        if (betas.shape[0] != numTrainTimesteps)
            throw new SdLoraException($"trained_betas has {betas.shape[0]} values but num_train_timesteps is {numTrainTimesteps}: make them agree");
        var acp = torch.cumprod(1 - betas, 0);
        // Detached, not moved out: a schedule built inside a caller's dispose scope must outlive that scope.
        Betas = betas.DetachFromDisposeScope();
        AlphasCumprod = acp.DetachFromDisposeScope();
        Sigmas = ((1 - acp) / acp).sqrt().DetachFromDisposeScope();
        _acp = AlphasCumprod.data<float>().Select(v => (double)v).ToArray();
        _sigmas = Sigmas.data<float>().Select(v => (double)v).ToArray();
    }

    /// <summary>alphas_cumprod[t] (the float32 table value).</summary>
    public double AlphaCumprodAt(int t) => _acp[t];
    /// <summary>Alpha product of the step before the first training step: 1 or acp[0] per <see cref="SetAlphaToOne"/>.</summary>
    public double FinalAlphaCumprod => SetAlphaToOne ? 1.0 : _acp[0];
    /// <summary>sigma of a (possibly fractional) timestep, interpolated linearly like np.interp.</summary>
    public double SigmaAt(double t)
    {
        if (t <= 0) return _sigmas[0];
        if (t >= NumTrainTimesteps - 1) return _sigmas[^1];
        int lo = (int)Math.Floor(t);
        double w = t - lo;
        return _sigmas[lo] + w * (_sigmas[lo + 1] - _sigmas[lo]);
    }
    /// <summary>The (fractional) timestep whose sigma is <paramref name="sigma"/>, interpolating in log sigma.</summary>
    public double TimestepOf(double sigma)
    {
        double logSigma = Math.Log(Math.Max(sigma, 1e-10));
        int lo = 0;
        for (int i = 0; i < _sigmas.Length; i++) if (logSigma - Math.Log(_sigmas[i]) >= 0) lo = i;
        lo = Math.Min(lo, _sigmas.Length - 2);
        double low = Math.Log(_sigmas[lo]), high = Math.Log(_sigmas[lo + 1]);
        double w = Math.Clamp((low - logSigma) / (low - high), 0, 1);
        return (1 - w) * lo + w * (lo + 1);
    }

    /// <summary>
    /// <paramref name="count"/> descending inference timesteps per <see cref="TimestepSpacing"/> (diffusers'
    /// <c>set_timesteps</c>); <paramref name="round"/> false keeps linspace's fractional values (Euler/LMS).
    /// </summary>
    public double[] SpacedTimesteps(int count, bool round = true)
    {
        int T = NumTrainTimesteps;
        double Round(double v) => round ? Math.Round(v, MidpointRounding.ToEven) : v;
        return TimestepSpacing switch
        {
            "leading" => Enumerable.Range(0, count).Reverse().Select(i => (double)(i * (T / count) + StepsOffset)).ToArray(),
            "trailing" => Enumerable.Range(0, count).Select(i => Math.Round(T - i * ((double)T / count), MidpointRounding.ToEven) - 1).ToArray(),
            _ => Enumerable.Range(0, count).Reverse().Select(i => Round(count == 1 ? 0 : (T - 1) * (double)i / (count - 1))).ToArray(),
        };
    }

    /// <summary>acp[t] / (1 - acp[t]) for integer timesteps [B] (any device); float32 [B] on that device.</summary>
    public Tensor Snr(Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var acp = Gather(AlphasCumprod, timesteps);
        return (acp / (1 - acp)).MoveToOuterDisposeScope();
    }

    /// <summary>Forward diffusion q(x_t | x_0): sqrt(acp[t]) x0 + sqrt(1 - acp[t]) noise, per batch row.</summary>
    public Tensor AddNoise(Tensor x0, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var (a, s) = Coefficients(x0, timesteps);
        return (a * x0 + s * noise).MoveToOuterDisposeScope();
    }

    /// <summary>The v-prediction target: sqrt(acp[t]) noise - sqrt(1 - acp[t]) x0.</summary>
    public Tensor Velocity(Tensor x0, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var (a, s) = Coefficients(x0, timesteps);
        return (a * noise - s * x0).MoveToOuterDisposeScope();
    }

    private (Tensor SqrtAcp, Tensor SqrtOneMinusAcp) Coefficients(Tensor x, Tensor timesteps)
    {
        var acp = Gather(AlphasCumprod, timesteps).to(x.dtype, x.device);
        var shape = new long[x.dim()];
        Array.Fill(shape, 1L);
        shape[0] = acp.shape[0];
        return (acp.sqrt().reshape(shape), (1 - acp).sqrt().reshape(shape));
    }

    private static Tensor Gather(Tensor table, Tensor timesteps) =>
        table.index_select(0, timesteps.to(ScalarType.Int64, CPU).flatten()).to(timesteps.device);

    /// <summary>
    /// Reads a diffusers <c>scheduler_config.json</c> (any scheduler class: only the shared schedule keys
    /// matter). <paramref name="source"/> names the file in error messages.
    /// </summary>
    public static NoiseSchedule FromSchedulerConfigJson(string json, string source = "scheduler_config.json")
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw new SdLoraException($"{source}: not valid JSON ({e.Message}); fix or re-download the scheduler config", e); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new SdLoraException($"{source}: expected a JSON object; fix or re-download the scheduler config");
            T Get<T>(string key, T fallback, Func<JsonElement, T> read)
            {
                if (!root.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
                try { return read(v); }
                catch (Exception e) when (e is InvalidOperationException or FormatException)
                { throw new SdLoraException($"{source}: '{key}' has an unexpected value {v.GetRawText()}; fix the scheduler config", e); }
            }
            var prediction = Get("prediction_type", "epsilon", v => v.GetString()!);
            var predictionType = prediction switch
            {
                "epsilon" => PredictionType.Epsilon,
                "v_prediction" => PredictionType.VPrediction,
                _ => throw new SdLoraException($"{source}: prediction_type '{prediction}' is not supported: use epsilon or v_prediction"),
            };
            int trainSteps = Get("num_train_timesteps", 1000, v => v.GetInt32());
            string betaSchedule = Get("beta_schedule", "scaled_linear", v => v.GetString()!);
            double betaStart = Get("beta_start", 0.00085, v => v.GetDouble()), betaEnd = Get("beta_end", 0.012, v => v.GetDouble());
            string spacing = Get("timestep_spacing", "leading", v => v.GetString()!); // PNDM/DDIM's default, SD1.x configs omit it
            int stepsOffset = Get("steps_offset", 0, v => v.GetInt32());
            bool setAlphaToOne = Get("set_alpha_to_one", true, v => v.GetBoolean());
            var trainedBetas = Get<float[]?>("trained_betas", null, v => v.EnumerateArray().Select(b => (float)b.GetDouble()).ToArray());
            try
            {
                return new NoiseSchedule(trainSteps, betaSchedule, betaStart, betaEnd, predictionType, spacing, stepsOffset, setAlphaToOne, trainedBetas);
            }
            catch (SdLoraException e) { throw new SdLoraException($"{source}: {e.Message}", e); }
        }
    }
}
