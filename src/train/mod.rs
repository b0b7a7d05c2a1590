//! Supervised fine-tuning with LLaMA-Factory's semantics: LoRA, or the model's own weights
//! (`full`, `freeze`), optionally with 8-bit optimizer states and quantized gradients.
//!
//! - [`config`]: the settings, LLaMA-Factory's names and Web UI defaults.
//! - [`prepare`]: template choice, validation split, encoding, packing.
//! - [`batch`]: items, padded batches, per-epoch order.
//! - [`loss`]: token cross-entropy and accuracy; [`gradients`]: one batch's loss and gradients,
//!   whole-graph or recomputed per block (gradient checkpointing).
//! - [`trainable`]: what a run trains (LoRA factors, or all or some of the weights).
//! - [`optim`]: AdamW (f32 or 8-bit moments, [`dynamic_map`]), plain SGD, gradient clipping;
//!   [`schedule`]: learning-rate schedules; [`grad_quant`]: quantized gradients.
//! - [`checkpoint`]: atomic checkpoints and resume; [`log`]: `trainer_log.jsonl`.
//! - [`data_parallel`]: what each of several ranks computes and what they exchange.
//! - [`progress`]: the bar or plain lines; [`sft`]: the loop; [`run`]: its result.

#[cfg(feature = "cuda")]
pub mod adamw_cuda;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data_parallel;
pub mod dynamic_map;
pub mod grad_quant;
pub mod gradients;
pub mod log;
pub mod loss;
pub mod optim;
pub mod prepare;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod sft;
pub mod trainable;

pub use config::SftConfig;
pub use run::{Run, StopReason};
pub use schedule::Schedule;
pub use sft::{sft, Hooks};
