using System.Text.Json;
using System.Text.Json.Nodes;
using SdLora.IO;
using SdLora.Lora;
using SdLora.Models;
using SdLora.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace SdLora.Checkpoints;

/// <summary>
/// Writes a whole Stable Diffusion 1.x model: the tensors of a source checkpoint with some replaced (a fine-tune's
/// trained UNet and text encoder), in either layout, one tensor in memory at a time:
/// <list type="bullet">
/// <item>an LDM single file (<c>.safetensors</c>): from an LDM source, the source's keys, order and metadata (EMA copies
///   left out: they would still hold the weights from before training); from a diffusers source, the keys of the
///   original layout (plus <c>position_ids</c>, as SD1.5 files have); a <c>NAME.yaml</c> beside the source is copied beside the output;</item>
/// <item>a diffusers folder: from a diffusers source, its files with the weights rewritten; from an LDM source, a complete
///   folder (<c>model_index.json</c>, configs, tokenizer, scheduler, safetensors weights).</item>
/// </list>
/// Floating-point tensors are written in <c>dtype</c> (fp16 by default, as checkpoints are shared); written atomically.
/// </summary>
public static class CheckpointWriter
{
    /// <param name="replaced">The new value of a weight, by part and diffusers/transformers name; null keeps the source's.</param>
    public static void Write(string source, Func<ModelPart, string, Tensor?> replaced, string output, CheckpointLayout layout,
        ScalarType dtype, IReadOnlyDictionary<string, string> metadata, CancellationToken cancellation = default)
    {
        using var src = StableDiffusionCheckpoint.Open(source);
        if (layout == CheckpointLayout.LdmSingleFile) WriteSingleFile(src, replaced, output, dtype, metadata, cancellation);
        else WriteDiffusersFolder(src, replaced, output, dtype, metadata, cancellation);
    }

    private static ScalarType OutputType(ScalarType stored, ScalarType dtype) =>
        stored is ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64 ? dtype : stored;

    // ---------------------------------------------------------------- single file

    private static void WriteSingleFile(StableDiffusionCheckpoint src, Func<ModelPart, string, Tensor?> replaced, string output,
        ScalarType dtype, IReadOnlyDictionary<string, string> metadata, CancellationToken cancellation)
    {
        var entries = new List<(TensorLayout Layout, Func<Tensor> Load)>();
        var md = new Dictionary<string, string>();
        if (src.RawSource is { } raw)
        {
            foreach (var (k, v) in TensorFiles.MetadataOf(raw)) md[k] = v;
            foreach (var key in raw.Keys)
            {
                if (key.StartsWith("model_ema.", StringComparison.Ordinal)) continue;
                var shape = raw.ShapeOf(key);
                Func<Tensor> load = () => raw.Load(key);
                if (LdmKeyMap.TryLdmKeyToDiffusers(key, src.UNetConfig, src.AutoencoderKLConfig, out var part, out var name) && replaced(part, name) is { } t)
                    load = () => t.detach().reshape(shape);
                entries.Add((new TensorLayout(key, OutputType(TensorFiles.DTypeOf(raw, key), dtype), shape), load));
            }
        }
        else
        {
            foreach (var part in new[] { ModelPart.UNet, ModelPart.Vae, ModelPart.TextEncoder })
            {
                var weights = src.WeightsOf(part);
                foreach (var name in weights.Keys)
                {
                    var key = LdmKeyMap.DiffusersKeyToLdm(part, name, src.UNetConfig, src.AutoencoderKLConfig);
                    if (key is null) continue;
                    var shape = weights.ShapeOf(name);
                    // LDM keeps the VAE's attention projections as 1x1 convolutions.
                    if (part == ModelPart.Vae && LdmKeyMap.IsVaeAttentionProjectionWeight(name) && shape.Length == 2) shape = [shape[0], shape[1], 1, 1];
                    var target = shape;
                    Func<Tensor> load = replaced(part, name) is { } t ? () => t.detach().reshape(target) : () => weights.Load(name).reshape(target);
                    entries.Add((new TensorLayout(key, OutputType(ScalarType.Float32, dtype), shape), load));
                }
            }
            int positions = src.ClipTextConfig.MaxPositionEmbeddings;
            entries.Add((new TensorLayout(LdmKeyMap.TextEncoderPrefix + "text_model.embeddings.position_ids", ScalarType.Int64, [1, positions]),
                () => torch.arange(positions, dtype: ScalarType.Int64).unsqueeze(0)));
        }
        foreach (var (k, v) in metadata) md[k] = v;
        var byName = entries.ToDictionary(e => e.Layout.Name, e => e.Load);
        SafetensorsStreamWriter.Write(output, entries.Select(e => e.Layout).ToList(), l => byName[l.Name]().to(l.DType), md, cancellation);

        // A YAML beside the source gives its dims; the output needs the same to load the same way.
        if (src.Layout == CheckpointLayout.LdmSingleFile && StableDiffusionCheckpoint.FindYaml(src.Path, null) is { } yaml)
            AtomicFile.WriteAllText(Path.ChangeExtension(output, ".yaml"), File.ReadAllText(yaml));
    }

    // ---------------------------------------------------------------- diffusers folder

    private static readonly (string Folder, ModelPart Part, string File)[] Parts =
    [
        ("unet", ModelPart.UNet, "diffusion_pytorch_model.safetensors"),
        ("vae", ModelPart.Vae, "diffusion_pytorch_model.safetensors"),
        ("text_encoder", ModelPart.TextEncoder, "model.safetensors"),
    ];

    private static void WriteDiffusersFolder(StableDiffusionCheckpoint src, Func<ModelPart, string, Tensor?> replaced, string output,
        ScalarType dtype, IReadOnlyDictionary<string, string> metadata, CancellationToken cancellation)
    {
        var full = Path.GetFullPath(output);
        var tmp = Path.Combine(Path.GetDirectoryName(full)!, "." + Path.GetFileName(full) + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp");
        try
        {
            if (src.Layout == CheckpointLayout.DiffusersFolder)
            {
                // Everything but the weights of the three networks, which are rewritten below.
                var weightFiles = Parts.SelectMany(p => Directory.Exists(Path.Combine(src.Path, p.Folder))
                        ? Directory.EnumerateFiles(Path.Combine(src.Path, p.Folder)).Where(IsWeightFile).Select(f => Path.GetRelativePath(src.Path, f))
                        : []).ToHashSet();
                LoraCheckpointMerge.CopyTree(src.Path, tmp, weightFiles);
            }
            else WriteConfigs(src, tmp);
            foreach (var (folder, part, file) in Parts)
            {
                var weights = src.WeightsOf(part);
                var layout = weights.Keys.Select(n => new TensorLayout(n, OutputType(ScalarType.Float32, dtype), weights.ShapeOf(n))).ToList();
                var md = new Dictionary<string, string> { ["format"] = "pt" };
                if (part == ModelPart.UNet) foreach (var (k, v) in metadata) md[k] = v;
                Directory.CreateDirectory(Path.Combine(tmp, folder));
                SafetensorsStreamWriter.Write(Path.Combine(tmp, folder, file), layout,
                    l => (replaced(part, l.Name) is { } t ? t.detach().alias() : weights.Load(l.Name)).to(l.DType), md, cancellation);
            }
            LoraCheckpointMerge.ReplaceFolder(tmp, full);
        }
        catch
        {
            try { if (Directory.Exists(tmp)) Directory.Delete(tmp, true); } catch (IOException) { }
            throw;
        }
    }

    private static bool IsWeightFile(string path) =>
        path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase)
        || path.EndsWith(".ckpt", StringComparison.OrdinalIgnoreCase);

    /// <summary>The non-weight files of a diffusers SD1.x folder, from the configs sdlora read the model with.</summary>
    private static void WriteConfigs(StableDiffusionCheckpoint src, string dir)
    {
        static void Json(string path, JsonObject o)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            AtomicFile.WriteAllText(path, o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
        static JsonArray Array<T>(IEnumerable<T> items) => new(items.Select(i => JsonValue.Create(i)).ToArray<JsonNode?>());
        const string version = "0.25.1";

        var u = src.UNetConfig;
        Json(Path.Combine(dir, "unet", "config.json"), new JsonObject
        {
            ["_class_name"] = "UNet2DConditionModel", ["_diffusers_version"] = version, ["act_fn"] = "silu",
            ["attention_head_dim"] = u.HeadsPerBlock.Distinct().Count() == 1 ? JsonValue.Create(u.HeadsPerBlock[0]) : Array(u.HeadsPerBlock),
            ["block_out_channels"] = Array(u.Channels), ["center_input_sample"] = false, ["cross_attention_dim"] = u.CrossAttentionDim,
            ["down_block_types"] = Array(u.DownBlocks), ["downsample_padding"] = 1, ["flip_sin_to_cos"] = u.FlipSinToCos, ["freq_shift"] = u.FreqShift,
            ["in_channels"] = u.InChannels, ["layers_per_block"] = u.LayersPerBlock, ["mid_block_scale_factor"] = 1, ["norm_eps"] = u.NormEps,
            ["norm_num_groups"] = u.NormNumGroups, ["out_channels"] = u.OutChannels, ["sample_size"] = u.SampleSize,
            ["up_block_types"] = Array(u.UpBlocks), ["use_linear_projection"] = u.UseLinearProjection,
        });
        var v = src.AutoencoderKLConfig;
        Json(Path.Combine(dir, "vae", "config.json"), new JsonObject
        {
            ["_class_name"] = "AutoencoderKL", ["_diffusers_version"] = version, ["act_fn"] = "silu", ["block_out_channels"] = Array(v.Channels),
            ["down_block_types"] = Array(Enumerable.Repeat("DownEncoderBlock2D", v.Channels.Length)), ["in_channels"] = v.InChannels,
            ["latent_channels"] = v.LatentChannels, ["layers_per_block"] = v.LayersPerBlock, ["norm_num_groups"] = v.NormNumGroups,
            ["out_channels"] = v.OutChannels, ["sample_size"] = v.SampleSize, ["scaling_factor"] = v.ScalingFactor,
            ["up_block_types"] = Array(Enumerable.Repeat("UpDecoderBlock2D", v.Channels.Length)),
        });
        var t = src.ClipTextConfig;
        Json(Path.Combine(dir, "text_encoder", "config.json"), new JsonObject
        {
            ["architectures"] = Array(["CLIPTextModel"]), ["attention_dropout"] = 0.0, ["bos_token_id"] = 0, ["dropout"] = 0.0,
            ["eos_token_id"] = t.EosTokenId, ["hidden_act"] = t.HiddenAct, ["hidden_size"] = t.HiddenSize, ["initializer_factor"] = 1.0,
            ["initializer_range"] = 0.02, ["intermediate_size"] = t.IntermediateSize, ["layer_norm_eps"] = t.LayerNormEps,
            ["max_position_embeddings"] = t.MaxPositionEmbeddings, ["model_type"] = "clip_text_model", ["num_attention_heads"] = t.NumAttentionHeads,
            ["num_hidden_layers"] = t.NumHiddenLayers, ["pad_token_id"] = 1, ["projection_dim"] = t.HiddenSize == 768 ? 768 : t.HiddenSize,
            ["torch_dtype"] = "float32", ["transformers_version"] = "4.33.0", ["vocab_size"] = t.VocabSize,
        });
        var s = src.Schedule;
        Json(Path.Combine(dir, "scheduler", "scheduler_config.json"), new JsonObject
        {
            ["_class_name"] = "PNDMScheduler", ["_diffusers_version"] = version, ["beta_end"] = s.BetaEnd, ["beta_schedule"] = s.BetaSchedule,
            ["beta_start"] = s.BetaStart, ["clip_sample"] = false, ["num_train_timesteps"] = s.TrainTimesteps, ["prediction_type"] = s.PredictionType,
            ["set_alpha_to_one"] = false, ["skip_prk_steps"] = true, ["steps_offset"] = 1, ["timestep_spacing"] = "leading", ["trained_betas"] = null,
        });
        Json(Path.Combine(dir, "model_index.json"), new JsonObject
        {
            ["_class_name"] = "StableDiffusionPipeline", ["_diffusers_version"] = version,
            ["feature_extractor"] = Array<string?>([null, null]), ["requires_safety_checker"] = false, ["safety_checker"] = Array<string?>([null, null]),
            ["scheduler"] = Array(["diffusers", "PNDMScheduler"]), ["text_encoder"] = Array(["transformers", "CLIPTextModel"]),
            ["tokenizer"] = Array(["transformers", "CLIPTokenizer"]), ["unet"] = Array(["diffusers", "UNet2DConditionModel"]),
            ["vae"] = Array(["diffusers", "AutoencoderKL"]),
        });
        var tokenizer = src.TokenizerDir is { } tok ? ClipTokenizer.FromDiffusersFolder(tok) : ClipTokenizer.Default;
        tokenizer.WriteDiffusersFolder(Path.Combine(dir, "tokenizer"), t.MaxPositionEmbeddings);
    }

}
