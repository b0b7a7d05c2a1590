//! The Rhai binding layer: everything that knows about Rhai lives here (and in `src/repl.rs`).
//!
//! The core library (`data`, `model`, `train`, ...) never imports rhai. Each area gets one
//! `api_<area>.rs` file whose functions only convert arguments, call the core and map errors
//! ([`errors::to_rhai`]). Shared conventions:
//! - one engine factory, [`engine::build_engine`], for the REPL, the runner, the test runner and tests;
//! - option maps are checked strictly with [`options::Options`];
//! - values handed to scripts are cheap to clone ([`handle::Handle`]);
//! - every exposed function has a doc comment (a test checks it), which feeds `:help`.

pub mod api_auto_mix;
pub mod api_core;
pub mod api_curves;
pub mod api_data;
pub mod api_dist;
pub mod api_export;
pub mod api_imatrix;
pub mod api_model;
pub mod api_quant;
pub mod api_serve;
pub mod api_train;
pub mod call_errors;
pub mod diagnostic;
pub mod engine;
pub mod errors;
pub mod handle;
pub mod help;
pub mod options;
pub mod resolver;
pub mod runner;
pub mod stdlib;
pub mod test_runner;

pub use engine::{build_engine, EngineOptions, HostContext};
