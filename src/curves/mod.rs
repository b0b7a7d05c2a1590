//! Loss curves: series of (step, value) points from runs, LLaMA-Factory / tunelab
//! `trainer_log.jsonl` files, CSV files and arrays; LLaMA-Factory's smoothing and TensorBoard's EMA.
//! (Plots and the diagnosis come next: issue 6.)
//!
//! - [`curve`]: the `Curve` type and its queries (min, argmin, last, slice).
//! - [`smooth`]: LLaMA-Factory's `smooth()` and TensorBoard's debiased EMA.
//! - [`sources`]: reading curves from files and arrays.

pub mod curve;
pub mod smooth;
pub mod sources;

pub use curve::Curve;
