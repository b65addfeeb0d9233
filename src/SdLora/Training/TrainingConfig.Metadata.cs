using System.Globalization;
using System.Text.Json;

namespace SdLora.Training;

/// <summary>What the dataset and batching looked like, for the <c>ss_*</c> metadata (built by <see cref="TrainingDataSummary.From"/>).</summary>
public sealed record TrainingDataSummary(int NumTrainImages, int NumRegImages, int NumBatchesPerEpoch, int MaxTrainSteps, int NumEpochs,
    string DatasetDirsJson, string RegDatasetDirsJson, string TagFrequencyJson, string BucketInfoJson)
{
    public static TrainingDataSummary From(TrainingConfig c, DreamBoothDataset dataset, BatchPlanner planner) =>
        new(dataset.NumTrainImages, dataset.NumRegImages, planner.BatchesPerEpoch, planner.TotalSteps(c), planner.TotalEpochs(c),
            dataset.DatasetDirsJson(false), dataset.DatasetDirsJson(true), JsonSerializer.Serialize(dataset.TagFrequency()),
            planner.BucketInfoJson());
}

public sealed partial record TrainingConfig
{
    /// <summary>
    /// kohya's training <c>ss_*</c> metadata (all values strings, as kohya writes them) for the saved LoRA's
    /// <c>__metadata__</c>. The loop adds per-save fields (<c>ss_epoch</c>, <c>ss_steps</c>, hashes).
    /// </summary>
    public Dictionary<string, string> ToKohyaMetadata(TrainingDataSummary data, DateTimeOffset trainingStartedAt, string? optimizerDescription = null)
    {
        static string B(bool b) => b ? "True" : "False";
        static string N(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        static string NOpt(double? v) => v is { } x ? N(x) : "None";
        var networkArgs = new Dictionary<string, string>();
        if (ConvDim is { } cd) networkArgs["conv_dim"] = cd.ToString(CultureInfo.InvariantCulture);
        if (ConvAlpha is { } ca) networkArgs["conv_alpha"] = N(ca);
        return new Dictionary<string, string>
        {
            ["ss_session_id"] = Random.Shared.NextInt64(0, 1L << 31).ToString(CultureInfo.InvariantCulture),
            ["ss_training_started_at"] = N(trainingStartedAt.ToUnixTimeMilliseconds() / 1000.0),
            ["ss_output_name"] = EffectiveOutputName,
            ["ss_learning_rate"] = N(LearningRate),
            ["ss_unet_lr"] = NetworkTrainsUnet ? N(EffectiveUnetLr) : "None",
            ["ss_text_encoder_lr"] = NetworkTrainsTextEncoder ? N(EffectiveTextEncoderLr) : "None",
            ["ss_num_train_images"] = data.NumTrainImages.ToString(CultureInfo.InvariantCulture),
            ["ss_num_reg_images"] = data.NumRegImages.ToString(CultureInfo.InvariantCulture),
            ["ss_num_batches_per_epoch"] = data.NumBatchesPerEpoch.ToString(CultureInfo.InvariantCulture),
            ["ss_num_epochs"] = data.NumEpochs.ToString(CultureInfo.InvariantCulture),
            ["ss_max_train_steps"] = data.MaxTrainSteps.ToString(CultureInfo.InvariantCulture),
            ["ss_batch_size_per_device"] = TrainBatchSize.ToString(CultureInfo.InvariantCulture),
            ["ss_total_batch_size"] = (TrainBatchSize * GradientAccumulationSteps).ToString(CultureInfo.InvariantCulture),
            ["ss_gradient_accumulation_steps"] = GradientAccumulationSteps.ToString(CultureInfo.InvariantCulture),
            ["ss_max_grad_norm"] = N(MaxGradNorm),
            ["ss_lr_scheduler"] = LrScheduler,
            ["ss_lr_warmup_steps"] = WarmupSteps(data.MaxTrainSteps).ToString(CultureInfo.InvariantCulture),
            ["ss_optimizer"] = optimizerDescription ?? Optimizer,
            ["ss_network_module"] = "networks.lora",
            ["ss_network_dim"] = NetworkDim.ToString(CultureInfo.InvariantCulture),
            ["ss_network_alpha"] = N(NetworkAlpha),
            ["ss_network_dropout"] = NOpt(NetworkDropout),
            ["ss_network_args"] = JsonSerializer.Serialize(networkArgs),
            ["ss_resolution"] = Resolution.ToKohyaString(),
            ["ss_seed"] = Seed.ToString(CultureInfo.InvariantCulture),
            ["ss_clip_skip"] = ClipSkip.ToString(CultureInfo.InvariantCulture),
            ["ss_noise_offset"] = NoiseOffset > 0 ? N(NoiseOffset) : "None",
            ["ss_min_snr_gamma"] = NOpt(MinSnrGamma),
            ["ss_v2"] = "False",
            ["ss_base_model_version"] = "sd_v1",
            ["ss_v_parameterization"] = B(VParameterization),
            ["ss_mixed_precision"] = MixedPrecision,
            ["ss_full_fp16"] = "False",
            ["ss_gradient_checkpointing"] = B(GradientCheckpointing),
            ["ss_cache_latents"] = B(CacheLatents),
            ["ss_caption_dropout_rate"] = N(CaptionDropout),
            ["ss_caption_dropout_every_n_epochs"] = "0",
            ["ss_caption_tag_dropout_rate"] = "0.0",
            ["ss_shuffle_caption"] = B(ShuffleCaption),
            ["ss_keep_tokens"] = KeepTokens.ToString(CultureInfo.InvariantCulture),
            ["ss_flip_aug"] = B(FlipAug),
            ["ss_color_aug"] = "False",
            ["ss_random_crop"] = B(RandomCrop),
            ["ss_enable_bucket"] = B(EnableBucket),
            ["ss_min_bucket_reso"] = EffectiveMinBucketReso.ToString(CultureInfo.InvariantCulture),
            ["ss_max_bucket_reso"] = EffectiveMaxBucketReso.ToString(CultureInfo.InvariantCulture),
            ["ss_bucket_no_upscale"] = B(BucketNoUpscale),
            ["ss_bucket_info"] = data.BucketInfoJson,
            ["ss_prior_loss_weight"] = N(PriorLossWeight),
            ["ss_tag_frequency"] = data.TagFrequencyJson,
            ["ss_dataset_dirs"] = data.DatasetDirsJson,
            ["ss_reg_dataset_dirs"] = data.RegDatasetDirsJson,
            ["ss_sd_model_name"] = Model is null ? "" : Path.GetFileName(Model.TrimEnd('/', '\\')),
        };
    }

    /// <summary>
    /// Metadata for a fine-tuned model or an embedding: kohya's <c>ss_*</c> training fields without the LoRA network
    /// ones, the Stability AI model-spec fields kohya writes (<c>modelspec.*</c>: architecture
    /// <c>stable-diffusion-v1</c>, with <c>/textual-inversion</c> for an embedding) and sdlora's own (<c>sdlora_*</c>).
    /// </summary>
    public Dictionary<string, string> ToMethodMetadata(TrainingDataSummary data, DateTimeOffset trainingStartedAt, string optimizerDescription)
    {
        var md = ToKohyaMetadata(data, trainingStartedAt, optimizerDescription);
        foreach (var key in md.Keys.Where(k => k.StartsWith("ss_network_", StringComparison.Ordinal)).ToList()) md.Remove(key);
        bool embedding = Method == MethodTextualInversion;
        md["modelspec.sai_model_spec"] = "1.0.0";
        md["modelspec.architecture"] = embedding ? "stable-diffusion-v1/textual-inversion" : "stable-diffusion-v1";
        md["modelspec.implementation"] = "diffusers";
        md["modelspec.title"] = EffectiveOutputName;
        md["modelspec.date"] = trainingStartedAt.UtcDateTime.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
        md["modelspec.resolution"] = $"{Resolution.Width}x{Resolution.Height}";
        md["modelspec.prediction_type"] = VParameterization ? "v" : "epsilon";
        md["sdlora_method"] = Method;
        if (embedding)
        {
            md["modelspec.trigger_phrase"] = TokenString ?? "";
            md["sdlora_token_string"] = TokenString ?? "";
            md["sdlora_num_vectors_per_token"] = NumVectorsPerToken.ToString(CultureInfo.InvariantCulture);
            md["sdlora_init_word"] = InitWord ?? "";
            md["sdlora_template"] = Template;
        }
        else
        {
            md["sdlora_train_text_encoder"] = TextEncoderTrainingSteps > 0 ? "True" : "False";
            if (StopTextEncoderTraining is { } stop) md["sdlora_stop_text_encoder_training"] = stop.ToString(CultureInfo.InvariantCulture);
        }
        return md;
    }
}
