//! Logits for comparing two models in tests (shared by the test files through `#[path]`).

#![allow(dead_code)] // each test file uses what it needs

use candle_core::{Device, Tensor};
use tunelab::lora::Adapter;
use tunelab::model::{Logits, Model, Pass};

/// The logits of every position of `ids` (one row), flattened; with `adapter` applied if given.
pub fn logits(m: &Model, ids: &[u32], adapter: Option<&Adapter>) -> Vec<f32> {
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let pass = Pass {
        adapter,
        ..Default::default()
    };
    m.llama
        .forward_with(&ids, None, None, Logits::All, pass)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// ‖a − b‖ / ‖a‖.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (d / n).sqrt()
}
