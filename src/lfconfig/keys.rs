//! Every LLaMA-Factory key tunelab knows, and what it does with each: reads it (for which
//! commands), accepts it with a line saying it has no effect here (PyTorch's machinery), or
//! refuses it with what to use instead — unless its value is the harmless default (`use_dora:
//! false` is fine). A key not in this table is an error with a "did you mean".

use serde_json::Value;

/// The commands that read a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Train,
    Chat,
    Export,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Train => "train",
            Command::Chat => "chat",
            Command::Export => "export",
        }
    }
}

/// What tunelab does with a key.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Read by these commands (others accept it silently, as LLaMA-Factory does).
    Used(&'static [Command]),
    /// Accepted; the line says why it changes nothing here.
    NoEffect(&'static str),
    /// Refused unless its value is one of `harmless`; the line says what to use instead.
    Refused {
        instead: &'static str,
        harmless: &'static [&'static str],
    },
}

use Command::{Chat, Export, Train};

const ALL: &[Command] = &[Train, Chat, Export];
const TRAIN: &[Command] = &[Train];
const CHAT: &[Command] = &[Chat];
const EXPORT: &[Command] = &[Export];
/// Values that mean "off" or "unset".
const OFF: &[&str] = &["false", "null", "", "0", "none", "no"];

const PYTORCH: &str = "a PyTorch/transformers setting; tunelab's own engine has no such knob";
const WORKERS: &str = "tunelab reads and tokenizes data in-process, with no worker pool";
const HUB: &str = "tunelab works offline, on local files";
const LOGGING: &str =
    "tunelab logs to trainer_log.jsonl and the terminal, as LLaMA-Factory's own log";

/// The table, in LLaMA-Factory's groups (model, method, dataset, output, train, eval, generation,
/// export).
pub const KEYS: &[(&str, Role)] = &[
    // model
    ("model_name_or_path", Role::Used(ALL)),
    ("adapter_name_or_path", Role::Used(ALL)),
    ("template", Role::Used(ALL)),
    ("trust_remote_code", Role::NoEffect("tunelab runs no model code from the model folder")),
    ("cache_dir", Role::NoEffect(HUB)),
    ("model_revision", Role::NoEffect(HUB)),
    ("hf_hub_token", Role::NoEffect(HUB)),
    ("ms_hub_token", Role::NoEffect(HUB)),
    ("use_fast_tokenizer", Role::NoEffect("tunelab always uses the fast tokenizer (tokenizer.json)")),
    ("flash_attn", Role::NoEffect("tunelab's attention is its own kernel; there is nothing to choose")),
    ("low_cpu_mem_usage", Role::NoEffect(PYTORCH)),
    ("use_cache", Role::NoEffect(PYTORCH)),
    ("upcast_layernorm", Role::NoEffect("norms are computed in f32 already")),
    ("upcast_lmhead_output", Role::NoEffect("logits are computed in f32 already")),
    ("enable_liger_kernel", Role::NoEffect(PYTORCH)),
    ("use_unsloth", Role::NoEffect(PYTORCH)),
    ("use_unsloth_gc", Role::NoEffect(PYTORCH)),
    ("disable_gradient_checkpointing", Role::NoEffect("tunelab recomputes blocks only when `gradient_checkpointing: true` is set (LLaMA-Factory's default is to recompute; on a CPU that costs a third of each step for memory rarely short)")),
    ("use_reentrant_gc", Role::NoEffect(PYTORCH)),
    ("print_param_status", Role::NoEffect(PYTORCH)),
    ("infer_dtype", Role::NoEffect("tunelab computes in f32 on the CPU and bf16 on a GPU")),
    ("infer_backend", Role::NoEffect("tunelab is its own inference engine")),
    ("quantization_bit", Role::Refused {
        instead: "bitsandbytes is not used; point model_name_or_path at a GGUF (e.g. Q4_K_M from `tunelab quantize`) to train on quantized weights",
        harmless: OFF,
    }),
    ("quantization_method", Role::Refused {
        instead: "point model_name_or_path at a quantized GGUF instead",
        harmless: &["bitsandbytes", "bnb", "null", ""],
    }),
    ("double_quantization", Role::NoEffect("only with quantization_bit, which tunelab replaces by GGUF weights")),
    ("rope_scaling", Role::Refused { instead: "the model's own rope settings are used; remove the key", harmless: OFF }),
    ("shift_attn", Role::Refused { instead: "LongLoRA's shift attention is not built; remove the key", harmless: OFF }),
    ("mixture_of_depths", Role::Refused { instead: "not built; remove the key", harmless: OFF }),
    ("resize_vocab", Role::Refused { instead: "not built; keep the model's vocabulary", harmless: OFF }),
    ("new_special_tokens", Role::Refused { instead: "not built; keep the model's vocabulary", harmless: OFF }),
    ("split_special_tokens", Role::Refused { instead: "special tokens are always kept whole", harmless: OFF }),
    // method
    ("stage", Role::Used(TRAIN)),
    ("do_train", Role::Used(TRAIN)),
    ("finetuning_type", Role::Used(ALL)),
    ("freeze_trainable_layers", Role::Used(TRAIN)),
    ("freeze_trainable_modules", Role::Used(TRAIN)),
    ("freeze_extra_modules", Role::Used(TRAIN)),
    ("lora_rank", Role::Used(TRAIN)),
    ("lora_alpha", Role::Used(TRAIN)),
    ("lora_dropout", Role::Used(TRAIN)),
    ("lora_target", Role::Used(TRAIN)),
    ("use_rslora", Role::Used(TRAIN)),
    ("create_new_adapter", Role::Used(TRAIN)),
    ("use_dora", Role::Refused { instead: "DoRA is not built; train plain LoRA (remove the key)", harmless: OFF }),
    ("pissa_init", Role::Refused { instead: "PiSSA is not built; remove the key", harmless: OFF }),
    ("pissa_convert", Role::Refused { instead: "PiSSA is not built; remove the key", harmless: OFF }),
    ("loraplus_lr_ratio", Role::Refused { instead: "LoRA+ is not built; remove the key", harmless: OFF }),
    ("additional_target", Role::Refused { instead: "only the linear layers in lora_target are trained", harmless: OFF }),
    ("use_galore", Role::Refused { instead: "GaLore is not built; use LoRA", harmless: OFF }),
    ("use_apollo", Role::Refused { instead: "APOLLO is not built; use LoRA", harmless: OFF }),
    ("use_badam", Role::Refused { instead: "BAdam is not built; use LoRA", harmless: OFF }),
    ("use_llama_pro", Role::Refused { instead: "LLaMA Pro is not built; use LoRA", harmless: OFF }),
    ("use_adam_mini", Role::Refused { instead: "tunelab's optimizer is AdamW", harmless: OFF }),
    ("use_muon", Role::Refused { instead: "tunelab's optimizer is AdamW", harmless: OFF }),
    ("neftune_noise_alpha", Role::Refused { instead: "NEFTune is not built; remove the key", harmless: OFF }),
    ("deepspeed", Role::Refused {
        instead: "DeepSpeed is not used; several GPUs or CPU processes train data-parallel under tunelab launch, torchrun, mpirun or srun (docs/distributed.md)",
        harmless: OFF,
    }),
    ("fsdp", Role::Refused {
        instead: "FSDP is not used; every rank holds the whole model and ranks train data-parallel under tunelab launch (docs/distributed.md)",
        harmless: OFF,
    }),
    ("plot_loss", Role::Used(TRAIN)),
    ("compute_accuracy", Role::Refused { instead: "not built; the eval loss is logged", harmless: OFF }),
    ("disable_shuffling", Role::Refused { instead: "tunelab always shuffles with the seed", harmless: OFF }),
    ("pure_bf16", Role::Refused { instead: "LoRA weights stay f32; bf16 applies to the base on a GPU", harmless: OFF }),
    // dataset
    ("dataset", Role::Used(TRAIN)),
    ("dataset_dir", Role::Used(TRAIN)),
    ("eval_dataset", Role::Used(TRAIN)),
    ("val_size", Role::Used(TRAIN)),
    ("cutoff_len", Role::Used(TRAIN)),
    ("max_samples", Role::Used(TRAIN)),
    ("train_on_prompt", Role::Used(TRAIN)),
    ("mask_history", Role::Used(TRAIN)),
    ("packing", Role::Used(TRAIN)),
    ("neat_packing", Role::Used(TRAIN)),
    ("default_system", Role::Used(CHAT)),
    ("enable_thinking", Role::NoEffect("tunelab's templates have no thinking switch")),
    ("mix_strategy", Role::Refused { instead: "datasets are concatenated (mix_strategy: concat)", harmless: &["concat", "null", ""] }),
    ("interleave_probs", Role::Refused { instead: "datasets are concatenated", harmless: OFF }),
    ("streaming", Role::Refused { instead: "datasets are read whole; remove the key", harmless: OFF }),
    ("tokenized_path", Role::Refused { instead: "tunelab tokenizes on the fly (fast); remove the key", harmless: OFF }),
    ("tool_format", Role::Refused { instead: "tool calls use the template's own format", harmless: OFF }),
    ("overwrite_cache", Role::NoEffect("tunelab keeps no tokenized cache")),
    ("preprocessing_num_workers", Role::NoEffect(WORKERS)),
    ("preprocessing_batch_size", Role::NoEffect(WORKERS)),
    ("dataloader_num_workers", Role::NoEffect(WORKERS)),
    ("dataloader_pin_memory", Role::NoEffect(PYTORCH)),
    ("dataloader_persistent_workers", Role::NoEffect(WORKERS)),
    ("ignore_pad_token_for_loss", Role::NoEffect("padding never counts in tunelab's loss")),
    ("media_dir", Role::NoEffect("tunelab trains text models only")),
    // output
    ("output_dir", Role::Used(TRAIN)),
    ("overwrite_output_dir", Role::Used(TRAIN)),
    ("logging_steps", Role::Used(TRAIN)),
    ("save_steps", Role::Used(TRAIN)),
    ("save_strategy", Role::Refused { instead: "checkpoints are saved every save_steps", harmless: &["steps", "null", ""] }),
    ("logging_strategy", Role::Refused { instead: "logs are written every logging_steps", harmless: &["steps", "null", ""] }),
    ("save_total_limit", Role::NoEffect("tunelab keeps every checkpoint; delete old checkpoint-N folders yourself")),
    ("save_only_model", Role::NoEffect("checkpoints always hold the adapter and the optimizer state")),
    ("report_to", Role::NoEffect(LOGGING)),
    ("run_name", Role::NoEffect(LOGGING)),
    ("logging_dir", Role::NoEffect(LOGGING)),
    ("log_level", Role::NoEffect(LOGGING)),
    ("logging_first_step", Role::NoEffect(LOGGING)),
    ("disable_tqdm", Role::NoEffect("tunelab draws its progress bar only on a terminal")),
    ("include_num_input_tokens_seen", Role::NoEffect("tunelab logs tokens per second itself")),
    ("include_tokens_per_second", Role::NoEffect("tunelab logs tokens per second itself")),
    ("include_effective_tokens_per_second", Role::NoEffect("tunelab logs tokens per second itself")),
    ("push_to_hub", Role::Refused { instead: "tunelab works offline; upload the output_dir yourself", harmless: OFF }),
    // train
    ("per_device_train_batch_size", Role::Used(TRAIN)),
    ("gradient_accumulation_steps", Role::Used(TRAIN)),
    ("learning_rate", Role::Used(TRAIN)),
    ("num_train_epochs", Role::Used(TRAIN)),
    ("max_steps", Role::Used(TRAIN)),
    ("lr_scheduler_type", Role::Used(TRAIN)),
    ("warmup_ratio", Role::Used(TRAIN)),
    ("warmup_steps", Role::Used(TRAIN)),
    ("max_grad_norm", Role::Used(TRAIN)),
    ("weight_decay", Role::Used(TRAIN)),
    ("adam_beta1", Role::Used(TRAIN)),
    ("adam_beta2", Role::Used(TRAIN)),
    ("adam_epsilon", Role::Used(TRAIN)),
    ("seed", Role::Used(ALL)),
    ("bf16", Role::Used(TRAIN)),
    ("fp16", Role::Used(TRAIN)),
    ("tf32", Role::NoEffect(PYTORCH)),
    ("resume_from_checkpoint", Role::Used(TRAIN)),
    ("group_by_length", Role::Used(TRAIN)),
    ("early_stopping_steps", Role::Used(TRAIN)),
    ("optim", Role::Used(TRAIN)),
    ("gradient_checkpointing", Role::Used(TRAIN)),
    ("torch_compile", Role::NoEffect(PYTORCH)),
    ("ddp_timeout", Role::NoEffect("a rank waits TUNELAB_DIST_TIMEOUT seconds (default 600) for the others")),
    ("ddp_find_unused_parameters", Role::NoEffect("only the trainable weights' gradients are summed over ranks")),
    ("data_seed", Role::NoEffect("the data order follows seed")),
    ("full_determinism", Role::NoEffect("tunelab's runs are deterministic for a seed already")),
    ("remove_unused_columns", Role::NoEffect(PYTORCH)),
    // eval
    ("do_eval", Role::NoEffect("evaluation runs when val_size or eval_dataset is set")),
    ("eval_strategy", Role::Used(TRAIN)),
    ("eval_steps", Role::Used(TRAIN)),
    ("per_device_eval_batch_size", Role::NoEffect("evaluation uses the training batch size")),
    ("predict_with_generate", Role::Refused { instead: "use generate() in a script to predict", harmless: OFF }),
    ("do_predict", Role::Refused { instead: "use generate() in a script to predict", harmless: OFF }),
    // generation (chat)
    ("do_sample", Role::Used(CHAT)),
    ("temperature", Role::Used(CHAT)),
    ("top_p", Role::Used(CHAT)),
    ("top_k", Role::Used(CHAT)),
    ("max_new_tokens", Role::Used(CHAT)),
    ("max_length", Role::NoEffect("replies are bounded by max_new_tokens")),
    ("repetition_penalty", Role::Used(CHAT)),
    ("num_beams", Role::Refused { instead: "beam search is not built; tunelab samples", harmless: &["1", "null", ""] }),
    ("length_penalty", Role::NoEffect("only with beam search")),
    ("skip_special_tokens", Role::NoEffect("replies never show special tokens")),
    // export
    ("export_dir", Role::Used(EXPORT)),
    ("export_size", Role::Used(EXPORT)),
    ("export_legacy_format", Role::Refused {
        instead: "tunelab writes safetensors only (export_legacy_format: false)",
        harmless: OFF,
    }),
    ("export_device", Role::NoEffect("merging runs on the CPU")),
    ("export_quantization_bit", Role::Refused {
        instead: "GPTQ is not built; export a GGUF and quantize it: `tunelab quantize OUT.gguf Q4_K_M.gguf Q4_K_M`",
        harmless: OFF,
    }),
    ("export_quantization_dataset", Role::NoEffect("only with export_quantization_bit")),
    ("export_hub_model_id", Role::Refused { instead: "tunelab works offline; upload export_dir yourself", harmless: OFF }),
];

/// The role of `key`, or None when tunelab does not know it.
pub fn role(key: &str) -> Option<Role> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// The nearest known key to a misspelt one.
pub fn did_you_mean(key: &str) -> Option<&'static str> {
    crate::suggest::nearest(key, KEYS.iter().map(|(k, _)| *k))
}

/// `value` as the text compared against a refused key's harmless values.
pub fn canonical(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::String(s) => s.trim().to_lowercase(),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => "0".into(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_listed_once() {
        let mut names: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a key is listed twice");
    }

    #[test]
    fn typos_find_their_key() {
        assert_eq!(did_you_mean("lora_rnak"), Some("lora_rank"));
        assert_eq!(did_you_mean("learnig_rate"), Some("learning_rate"));
        assert_eq!(did_you_mean("completely_different_thing"), None);
    }

    #[test]
    fn harmless_values_are_recognised() {
        assert_eq!(canonical(&Value::Bool(false)), "false");
        assert_eq!(canonical(&Value::from(0.0)), "0");
        assert_eq!(canonical(&Value::from("Concat ")), "concat");
    }
}
