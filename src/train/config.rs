//! Everything `sft` can be told, under LLaMA-Factory's argument names, with LLaMA-Factory Web UI's
//! defaults (lr 5e-5, 3 epochs, cosine, batch 2, accumulation 8, clip 1.0, LoRA rank 8 / alpha 16 /
//! dropout 0 on every linear layer, cutoff 2048, logging every 5 steps, a checkpoint every 100).

use std::path::PathBuf;

use serde_json::json;

use super::grad_quant::GradQuant;
use super::schedule::Schedule;
use super::trainable::{FinetuningType, FreezeOptions};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::lora::LoraConfig;

/// The configuration of one supervised fine-tuning run.
#[derive(Debug, Clone)]
pub struct SftConfig {
    /// A built-in template name; empty: chosen from the tokenizer's special tokens.
    pub template: String,
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    /// Overrides the epochs when set.
    pub max_steps: Option<usize>,
    /// Use only the first N examples.
    pub max_samples: Option<usize>,
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub cutoff_len: usize,
    pub lr_scheduler_type: Schedule,
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub seed: u64,
    /// A fraction (< 1) or a count (≥ 1) of examples held out for evaluation.
    pub val_size: f64,
    pub eval_dataset: Option<Dataset>,
    /// Evaluate every N steps (default: the logging interval, as transformers).
    pub eval_steps: Option<usize>,
    pub logging_steps: usize,
    pub save_steps: usize,
    /// The run folder (default `runs/train_<date-time>`).
    pub out: Option<PathBuf>,
    pub resume: bool,
    /// Clear a previous run's log and checkpoints in `out` first (LLaMA-Factory's
    /// `overwrite_output_dir`; ignored when resuming).
    pub overwrite_output_dir: bool,
    pub train_on_prompt: bool,
    pub mask_history: bool,
    pub packing: bool,
    pub neat_packing: bool,
    /// Batch examples of similar length together.
    pub group_by_length: bool,
    pub lora: LoraConfig,
    /// Start the adapter from these factors instead of PEFT's random A and zero B (a low-rank
    /// compensation of the base's quantization error: LoftQ's start). Its rank and targets are
    /// the run's; B is divided by the run's scale so that scale·B·A is the given product.
    pub lora_init: Option<crate::lora::Adapter>,
    /// Stop when the eval loss has not improved for this many evaluations.
    pub early_stopping_patience: Option<usize>,
    /// Draw training_loss.png (and training_eval_loss.png) into the run folder at the end, as
    /// LLaMA-Factory's `plot_loss` (on in its Web UI).
    pub plot_loss: bool,
    /// What trains: LoRA factors, or the weights themselves (all, or some blocks').
    pub finetuning_type: FinetuningType,
    /// Which weights `freeze` trains.
    pub freeze: FreezeOptions,
    /// The optimizer: AdamW with f32 moments, bitsandbytes' 8-bit AdamW, or plain SGD.
    pub optim: Optim,
    /// Round each step's gradient before clipping and the optimizer (None: f32).
    pub grad_quant: Option<GradQuant>,
    /// Keep only each block's input for the backward pass and recompute the block there
    /// (Hugging Face's `gradient_checkpointing`): far less activation memory, every block run
    /// forward twice, the same gradients.
    pub gradient_checkpointing: bool,
}

/// The optimizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optim {
    AdamW,
    /// 8-bit block-wise moments, `block` values per absmax.
    AdamW8bit {
        block: usize,
    },
    /// `torch.optim.SGD` without momentum, as Hugging Face's `optim: sgd`.
    Sgd,
}

impl Optim {
    /// The 8-bit optimizer's default block (bitsandbytes' paper and releases before 0.45; later
    /// releases use 256, which `adamw_8bit_block` can ask for).
    pub const DEFAULT_BLOCK: usize = 2048;

    pub fn name(self) -> &'static str {
        match self {
            Optim::AdamW => "adamw",
            Optim::AdamW8bit { .. } => "adamw_8bit",
            Optim::Sgd => "sgd",
        }
    }
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            template: String::new(),
            learning_rate: 5e-5,
            num_train_epochs: 3.0,
            max_steps: None,
            max_samples: None,
            batch_size: 2,
            gradient_accumulation_steps: 8,
            cutoff_len: 2048,
            lr_scheduler_type: Schedule::Cosine,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            seed: 42,
            val_size: 0.0,
            eval_dataset: None,
            eval_steps: None,
            logging_steps: 5,
            save_steps: 100,
            out: None,
            resume: false,
            overwrite_output_dir: false,
            train_on_prompt: false,
            mask_history: false,
            packing: false,
            neat_packing: false,
            group_by_length: false,
            lora: LoraConfig::default(),
            lora_init: None,
            early_stopping_patience: None,
            plot_loss: true,
            finetuning_type: FinetuningType::Lora,
            freeze: FreezeOptions::default(),
            optim: Optim::AdamW,
            grad_quant: None,
            gradient_checkpointing: false,
        }
    }
}

impl SftConfig {
    /// Reject settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(Error::config(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("per_device_train_batch_size", self.batch_size)?;
        positive(
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps,
        )?;
        positive("logging_steps", self.logging_steps)?;
        positive("save_steps", self.save_steps)?;
        if self.cutoff_len < 4 {
            return Err(Error::config("cutoff_len", "must be at least 4"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::config("learning_rate", "must be a positive number"));
        }
        if self.max_steps.is_none()
            && (self.num_train_epochs.is_nan() || self.num_train_epochs <= 0.0)
        {
            return Err(Error::config(
                "num_train_epochs",
                "must be positive (or set max_steps)",
            ));
        }
        if let Some(0) = self.max_steps {
            return Err(Error::config("max_steps", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(Error::config("warmup_ratio", "must be in [0, 1)"));
        }
        if self.val_size < 0.0 {
            return Err(Error::config("val_size", "must be ≥ 0"));
        }
        if self.train_on_prompt && self.mask_history {
            return Err(Error::config(
                "mask_history",
                "cannot be combined with train_on_prompt (as in LLaMA-Factory)",
            ));
        }
        if let Some(0) = self.eval_steps {
            return Err(Error::config("eval_steps", "must be at least 1"));
        }
        if let Some(0) = self.early_stopping_patience {
            return Err(Error::config(
                "early_stopping_patience",
                "must be at least 1",
            ));
        }
        if let Optim::AdamW8bit { block: 0 } = self.optim {
            return Err(Error::config("adamw_8bit_block", "must be at least 1"));
        }
        if let Some(q) = &self.grad_quant {
            q.check()?;
        }
        if self.finetuning_type == FinetuningType::Freeze {
            self.freeze.validate()?;
        }
        if self.finetuning_type != FinetuningType::Lora && self.lora_init.is_some() {
            return Err(Error::config(
                "lora.init",
                format!(
                    "starts LoRA factors, and this run is finetuning_type \"{}\"",
                    self.finetuning_type.name()
                ),
            ));
        }
        self.lora.validate()
    }

    /// The settings as written to `training_args.json` (LLaMA-Factory's names).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "stage": "sft",
            "finetuning_type": self.finetuning_type.name(),
            "template": self.template,
            "learning_rate": self.learning_rate,
            "num_train_epochs": self.num_train_epochs,
            "max_steps": self.max_steps,
            "max_samples": self.max_samples,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "cutoff_len": self.cutoff_len,
            "lr_scheduler_type": self.lr_scheduler_type.name(),
            "warmup_steps": self.warmup_steps,
            "warmup_ratio": self.warmup_ratio,
            "max_grad_norm": self.max_grad_norm,
            "weight_decay": self.weight_decay,
            "adam_beta1": self.adam_beta1,
            "adam_beta2": self.adam_beta2,
            "adam_epsilon": self.adam_epsilon,
            "seed": self.seed,
            "val_size": self.val_size,
            "eval_dataset": self.eval_dataset.as_ref().map(|d| d.name().to_string()),
            "eval_steps": self.eval_steps,
            "logging_steps": self.logging_steps,
            "save_steps": self.save_steps,
            "output_dir": self.out.as_ref().map(|p| p.display().to_string()),
            "train_on_prompt": self.train_on_prompt,
            "mask_history": self.mask_history,
            "packing": self.packing,
            "neat_packing": self.neat_packing,
            "group_by_length": self.group_by_length,
            "lora_rank": self.lora.rank,
            "lora_alpha": self.lora.alpha,
            "lora_dropout": self.lora.dropout,
            "lora_target": self.lora.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
            "use_rslora": self.lora.rslora,
            "early_stopping_steps": self.early_stopping_patience,
            "plot_loss": self.plot_loss,
        });
        // The low-precision settings only when used, so runs written before they existed still
        // resume (the resume fingerprint is this map).
        let m = v.as_object_mut().expect("an object");
        if self.finetuning_type == FinetuningType::Freeze {
            m.insert(
                "freeze_trainable_layers".into(),
                json!(self.freeze.trainable_layers),
            );
            m.insert(
                "freeze_trainable_modules".into(),
                json!(self.freeze.trainable_modules.join(",")),
            );
            m.insert(
                "freeze_extra_modules".into(),
                json!(self.freeze.extra_modules.join(",")),
            );
        }
        match self.optim {
            Optim::AdamW => {}
            Optim::AdamW8bit { block } => {
                m.insert("optim".into(), json!("adamw_bnb_8bit"));
                m.insert("adamw_8bit_block".into(), json!(block));
            }
            Optim::Sgd => {
                m.insert("optim".into(), json!("sgd"));
            }
        }
        if let Some(q) = &self.grad_quant {
            m.insert("grad_quant".into(), json!(q.describe()));
        }
        if self.gradient_checkpointing {
            m.insert("gradient_checkpointing".into(), json!(true));
        }
        v
    }

    /// The settings that must not change when a run is resumed (same data order, same steps).
    pub fn resume_fingerprint(&self) -> serde_json::Value {
        let mut v = self.to_json();
        if let Some(m) = v.as_object_mut() {
            for key in [
                "output_dir",
                "logging_steps",
                "save_steps",
                "eval_steps",
                "early_stopping_steps",
                // Recomputing blocks changes memory and time, not what is computed.
                "gradient_checkpointing",
            ] {
                m.remove(key);
            }
        }
        v
    }
}
