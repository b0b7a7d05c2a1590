//! The data layer: LLaMA-Factory-compatible datasets.
//!
//! `readers` turn files (JSON, JSON Lines, CSV, TSV, Parquet, Arrow, text) into raw rows;
//! `registry` reads `dataset_info.json`; `convert` turns rows into normalized [`Example`]s with
//! LLaMA-Factory's alpaca/sharegpt/openai rules; `load` ties them together with skip reporting;
//! [`Dataset`] holds the result and its operations; `stats` and `save` inspect and write it;
//! `encode` turns examples into token ids and label masks for training.

pub mod convert;
pub mod dataset;
pub mod encode;
pub mod example;
pub mod load;
pub mod readers;
pub mod registry;
pub mod save;
pub mod stats;
pub mod template;
pub mod template_export;
pub mod tools;

pub use dataset::{Dataset, SkipReport};
pub use example::{Example, Message, Role};
pub use load::{load, LoadOptions, OnError};
