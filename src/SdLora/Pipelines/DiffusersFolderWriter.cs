using System.Text.Json;
using System.Text.Json.Nodes;
using SdLora.IO;
using SdLora.Models;
using SdLora.Sampling;
using SdLora.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Pipelines;

/// <summary>
/// Writes a Stable Diffusion 1.x model as a diffusers folder (<c>model_index.json</c>, <c>unet/</c>, <c>vae/</c>,
/// <c>text_encoder/</c>, <c>tokenizer/</c>, <c>scheduler/</c>), the layout diffusers' <c>StableDiffusionPipeline</c>
/// and <see cref="StableDiffusionModel.Load"/> read. The folder is written beside the target and moved into place
/// only when complete, so a failure leaves no half-written model.
/// </summary>
public static class DiffusersFolderWriter
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <param name="dtype">Weights' storage type (fp16 halves the size; the loader converts to the compute dtype).</param>
    /// <param name="extraFiles">More files to put in the folder (relative path -> content), e.g. a model card.</param>
    public static void Write(string folder, UNet2DConditionModel unet, AutoencoderKL vae, ClipTextModel textEncoder, ClipTokenizer tokenizer,
        NoiseSchedule schedule, ScalarType dtype = ScalarType.Float32, IReadOnlyDictionary<string, string>? extraFiles = null)
    {
        var target = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        var parent = Path.GetDirectoryName(target)!;
        Directory.CreateDirectory(parent);
        var tmp = Path.Combine(parent, "." + Path.GetFileName(target) + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp");
        try
        {
            Directory.CreateDirectory(tmp);
            WriteJson(Path.Combine(tmp, "model_index.json"), ModelIndex());
            WritePart(tmp, "unet", "diffusion_pytorch_model.safetensors", UNetConfigJson(unet.Config), unet, dtype);
            WritePart(tmp, "vae", "diffusion_pytorch_model.safetensors", VaeConfigJson(vae.Config), vae, dtype);
            WritePart(tmp, "text_encoder", "model.safetensors", TextEncoderConfigJson(textEncoder.Config, dtype), textEncoder, dtype);
            tokenizer.WriteDiffusersFolder(Path.Combine(tmp, "tokenizer"));
            Directory.CreateDirectory(Path.Combine(tmp, "scheduler"));
            WriteJson(Path.Combine(tmp, "scheduler", "scheduler_config.json"), SchedulerConfigJson(schedule));
            foreach (var (rel, text) in extraFiles ?? new Dictionary<string, string>())
            {
                var path = Path.Combine(tmp, rel);
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                File.WriteAllText(path, text);
            }
            AtomicFile.ReplaceFolder(tmp, target);
        }
        catch
        {
            try { if (Directory.Exists(tmp)) Directory.Delete(tmp, true); } catch (IOException) { }
            throw;
        }
    }

    private static void WritePart(string root, string part, string file, JsonObject config, nn.Module module, ScalarType dtype)
    {
        var dir = Path.Combine(root, part);
        Directory.CreateDirectory(dir);
        WriteJson(Path.Combine(dir, "config.json"), config);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var tensors = module.named_parameters().Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter.detach().to(dtype).contiguous()))
            .OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        Safetensors.Save(Path.Combine(dir, file), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    private static void WriteJson(string path, JsonObject json) => File.WriteAllText(path, json.ToJsonString(Indented) + "\n");

    private static JsonArray Array<T>(IEnumerable<T> items) => new(items.Select(i => JsonValue.Create(i)).ToArray<JsonNode?>());

    public static JsonObject ModelIndex() => new()
    {
        ["_class_name"] = "StableDiffusionPipeline",
        ["_diffusers_version"] = "0.25.1",
        ["feature_extractor"] = new JsonArray(null, null),
        ["requires_safety_checker"] = false,
        ["safety_checker"] = new JsonArray(null, null),
        ["scheduler"] = new JsonArray("diffusers", "DDIMScheduler"),
        ["text_encoder"] = new JsonArray("transformers", "CLIPTextModel"),
        ["tokenizer"] = new JsonArray("transformers", "CLIPTokenizer"),
        ["unet"] = new JsonArray("diffusers", "UNet2DConditionModel"),
        ["vae"] = new JsonArray("diffusers", "AutoencoderKL"),
    };

    public static JsonObject UNetConfigJson(UNetConfig c) => new()
    {
        ["_class_name"] = "UNet2DConditionModel",
        ["_diffusers_version"] = "0.25.1",
        ["act_fn"] = "silu",
        ["attention_head_dim"] = Array(c.HeadsPerBlock),
        ["block_out_channels"] = Array(c.Channels),
        ["center_input_sample"] = false,
        ["cross_attention_dim"] = c.CrossAttentionDim,
        ["down_block_types"] = Array(c.DownBlocks),
        ["downsample_padding"] = 1,
        ["flip_sin_to_cos"] = c.FlipSinToCos,
        ["freq_shift"] = c.FreqShift,
        ["in_channels"] = c.InChannels,
        ["layers_per_block"] = c.LayersPerBlock,
        ["mid_block_scale_factor"] = 1,
        ["norm_eps"] = c.NormEps,
        ["norm_num_groups"] = c.NormNumGroups,
        ["out_channels"] = c.OutChannels,
        ["sample_size"] = c.SampleSize,
        ["up_block_types"] = Array(c.UpBlocks),
        ["use_linear_projection"] = c.UseLinearProjection,
    };

    public static JsonObject VaeConfigJson(AutoencoderKLConfig c) => new()
    {
        ["_class_name"] = "AutoencoderKL",
        ["_diffusers_version"] = "0.25.1",
        ["act_fn"] = "silu",
        ["block_out_channels"] = Array(c.Channels),
        ["down_block_types"] = Array(c.Channels.Select(_ => "DownEncoderBlock2D")),
        ["in_channels"] = c.InChannels,
        ["latent_channels"] = c.LatentChannels,
        ["layers_per_block"] = c.LayersPerBlock,
        ["norm_num_groups"] = c.NormNumGroups,
        ["out_channels"] = c.OutChannels,
        ["sample_size"] = c.SampleSize,
        ["scaling_factor"] = c.ScalingFactor,
        ["up_block_types"] = Array(c.Channels.Select(_ => "UpDecoderBlock2D")),
    };

    public static JsonObject TextEncoderConfigJson(ClipTextConfig c, ScalarType dtype) => new()
    {
        ["architectures"] = new JsonArray("CLIPTextModel"),
        ["attention_dropout"] = 0.0,
        ["bos_token_id"] = 0,
        ["dropout"] = 0.0,
        ["eos_token_id"] = c.EosTokenId,
        ["hidden_act"] = c.HiddenAct,
        ["hidden_size"] = c.HiddenSize,
        ["initializer_factor"] = 1.0,
        ["initializer_range"] = 0.02,
        ["intermediate_size"] = c.IntermediateSize,
        ["layer_norm_eps"] = c.LayerNormEps,
        ["max_position_embeddings"] = c.MaxPositionEmbeddings,
        ["model_type"] = "clip_text_model",
        ["num_attention_heads"] = c.NumAttentionHeads,
        ["num_hidden_layers"] = c.NumHiddenLayers,
        ["pad_token_id"] = 1,
        ["projection_dim"] = c.HiddenSize,
        ["torch_dtype"] = dtype == ScalarType.Float16 ? "float16" : dtype == ScalarType.BFloat16 ? "bfloat16" : "float32",
        ["vocab_size"] = c.VocabSize,
    };

    public static JsonObject SchedulerConfigJson(NoiseSchedule s) => new()
    {
        ["_class_name"] = "DDIMScheduler",
        ["_diffusers_version"] = "0.25.1",
        ["beta_end"] = s.BetaEnd,
        ["beta_schedule"] = s.BetaSchedule,
        ["beta_start"] = s.BetaStart,
        ["clip_sample"] = false,
        ["num_train_timesteps"] = s.NumTrainTimesteps,
        ["prediction_type"] = s.PredictionType == PredictionType.VPrediction ? "v_prediction" : "epsilon",
        ["set_alpha_to_one"] = s.SetAlphaToOne,
        ["steps_offset"] = s.StepsOffset,
        ["timestep_spacing"] = s.TimestepSpacing,
        ["trained_betas"] = null,
    };
}
