//! LLaMA-Factory's YAML configs, run unchanged: `tunelab train | chat | export CONFIG.yaml
//! [key=value ...]`, as `llamafactory-cli` takes them.
//!
//! - [`file`]: the file and its command-line overrides, each key with its line.
//! - [`keys`]: every key tunelab knows and what it does with it (reads it, accepts it with a note
//!   that it has no effect, or refuses it with what to use instead).
//! - [`plan`]: a checked config turned into typed settings with LLaMA-Factory's command-line
//!   defaults.
//! - [`script`]: the equivalent tunelab script (`--print-script`).
//! - [`run`]: carrying a plan out.

pub mod file;
pub mod keys;
pub mod plan;
pub mod run;
pub mod script;

pub use file::ConfigFile;
pub use keys::Command;
pub use plan::{check, ChatPlan, ExportPlan, TrainPlan};
