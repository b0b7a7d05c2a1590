//! What the training tests share: the tiny model, the shipped datasets, and hooks that print
//! nothing.

use std::path::PathBuf;

use tunelab::cancel::CancelToken;
use tunelab::data::{load, LoadOptions};
use tunelab::model::{self, Model};
use tunelab::output::Output;
use tunelab::train::Hooks;

pub fn tiny() -> Model {
    model::load("tiny", &Default::default()).unwrap()
}

/// A dataset from the repository's `data/` folder.
pub fn shipped(name: &str) -> tunelab::data::Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    load(
        name,
        &LoadOptions {
            dir,
            ..Default::default()
        },
        &CancelToken::new(),
    )
    .unwrap()
}

pub fn quiet_hooks<'a>(cancel: &'a CancelToken, out: &'a Output) -> Hooks<'a> {
    Hooks {
        on_log: None,
        cancel,
        output: out,
        progress_bar: false,
        collective: None,
    }
}

/// The largest absolute difference between two tensors of the same shape.
#[allow(dead_code)] // not every test binary that includes this file compares tensors
pub fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
