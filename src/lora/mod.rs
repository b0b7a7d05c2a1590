//! LoRA: low-rank adapters on a frozen Llama, their configuration, and their files.
//!
//! - [`config`]: rank, alpha, dropout, targets (LLaMA-Factory's defaults).
//! - [`adapter`]: the trainable factors and the update they add to a projection.
//! - [`merge`]: folding an adapter into the base weights.
//! - [`peft`]: reading and writing PEFT's adapter folder (`adapter_config.json` +
//!   `adapter_model.safetensors`), which PEFT, LLaMA-Factory and llama.cpp's converter read.

pub mod adapter;
pub mod config;
pub mod merge;
pub mod peft;

pub use adapter::{Adapter, Dropout, LoraPair};
pub use config::{LoraConfig, Target};
