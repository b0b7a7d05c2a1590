//! tunelab: the life of a fine-tuned Llama-family model as a short Rhai script.
//!
//! The library is the whole program except the command line: the core areas know nothing of
//! scripting, and [`script`] binds them to Rhai. See `README.md` for the user's view and the
//! project's `DESIGN.md` for the architecture.
//!
//! - [`error`]: the one error type, with path/record context and exit codes.
//! - [`cancel`]: the shared Ctrl-C flag every long loop checks.
//! - [`clock`]: UTC dates for run names and prompts.
//! - [`collective`]: the operations data-parallel ranks share (sums over ranks), and this process's group.
//! - [`curves`]: loss curves.
//! - [`output`]: the one output sink for prints, streamed tokens and progress.
//! - [`fsutil`]: atomic writes for every artifact.
//! - [`rng`]: the seeded generator behind every shuffle and sample.
//! - [`data`]: LLaMA-Factory-compatible datasets.
//! - [`dist`]: data-parallel ranks: launchers' variables, the MPI engine, `tunelab launch`.
//! - [`ggml`]: ggml block formats, reference quantizers and quantized kernels.
//! - [`model`]: Llama models, loaders, tokenizers, perplexity.
//! - [`generate`]: sampling, generation, chat sessions.
//! - [`lora`]: LoRA adapters and their PEFT files.
//! - [`train`]: supervised fine-tuning with LoRA.
//! - [`quant`]: the quantization lab: presets, plans, in-memory quantize, reports, plots.
//! - [`gguf`]: the GGUF file format, read and written.
//! - [`export`]: every export format in one step (`tunelab export`).
//! - [`version`]: what this build is made of.
//! - [`procstat`]: peak memory and CPU time, for benchmarks; [`gpu_memory`]: peak GPU memory.
//! - [`script`]: the Rhai engine, stdlib, runner and test runner.
//! - [`serve`]: the OpenAI-compatible HTTP server.
//! - [`lfconfig`]: LLaMA-Factory's YAML configs, run unchanged.
//! - [`suggest`]: "did you mean" for misspelt names.
//! - [`repl`]: the interactive terminal front end.

pub mod cancel;
pub mod clock;
pub mod collective;
pub mod curves;
pub mod data;
pub mod dist;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod generate;
pub mod ggml;
pub mod gguf;
pub mod gpu_memory;
pub mod lfconfig;
pub mod lora;
pub mod model;
pub mod output;
pub mod procstat;
pub mod quant;
pub mod repl;
pub mod rng;
pub mod script;
pub mod serve;
pub mod suggest;
pub mod train;
pub mod version;

pub use error::{Error, Result};
