//! Supervised fine-tuning with LoRA, with LLaMA-Factory's semantics.
//!
//! - [`config`]: the settings, LLaMA-Factory's names and Web UI defaults.
//! - [`prepare`]: template choice, validation split, encoding, packing.
//! - [`batch`]: items, padded batches, per-epoch order.
//! - [`loss`]: token cross-entropy and accuracy.
//! - [`optim`]: AdamW and gradient clipping; [`schedule`]: learning-rate schedules.
//! - [`checkpoint`]: atomic checkpoints and resume; [`log`]: `trainer_log.jsonl`.
//! - [`progress`]: the bar or plain lines; [`sft`]: the loop; [`run`]: its result.

#[cfg(feature = "cuda")]
pub mod adamw_cuda;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod log;
pub mod loss;
pub mod optim;
pub mod prepare;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod sft;

pub use config::SftConfig;
pub use run::{Run, StopReason};
pub use schedule::Schedule;
pub use sft::{sft, Hooks};
