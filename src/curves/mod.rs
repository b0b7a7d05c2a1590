//! Loss curves: series of (step, value) points from runs, LLaMA-Factory / tunelab
//! `trainer_log.jsonl` files, CSV files and arrays; LLaMA-Factory's smoothing and TensorBoard's EMA.
//!
//! - [`curve`]: the `Curve` type and its queries (min, argmin, last, slice).
//! - [`smooth`]: LLaMA-Factory's `smooth()` and TensorBoard's debiased EMA.
//! - [`sources`]: reading curves from files and arrays.
//! - [`diagnose`]: the verdict on a curve (converging … overfitting … diverged) with evidence.
//! - `reading`: what a curve shows (levels, noise, spikes, tail; the eval minimum and rise),
//!   measured with [`stats`], the robust statistics; `format` writes the evidence's numbers.
//! - [`plot`]: PNG/SVG charts (original faint + smoothed solid, legend, best-eval marker).
//! - [`fonts`]: the bundled Latin font and the located CJK fallback for plot text.

pub mod curve;
pub mod diagnose;
pub mod fonts;
mod format;
pub mod plot;
mod reading;
pub mod smooth;
pub mod sources;
pub mod stats;

pub use curve::Curve;
pub use diagnose::{diagnose, Diagnosis, Verdict};
