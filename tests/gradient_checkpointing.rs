//! Gradient checkpointing: recomputing each block in the backward pass gives the gradients the
//! whole-graph pass gives — bit for bit for LoRA (dropout included, on a packed batch), to
//! rounding for full fine-tuning (the tied embedding's two gradients add in another order) — and
//! a run with it has the same losses as one without.

#[path = "support/tiny.rs"]
mod tiny;

use std::cell::RefCell;

use candle_core::{Device, Tensor};
use tiny::{max_diff, quiet_hooks, shipped, tiny};
use tunelab::cancel::CancelToken;
use tunelab::lora::{Adapter, Dropout, LoraConfig};
use tunelab::model::{Model, Pass};
use tunelab::output::Output;
use tunelab::rng::Rng;
use tunelab::train::batch::{stack, Batch, Item};
use tunelab::train::gradients;
use tunelab::train::trainable::{self, FreezeOptions, Trainable};
use tunelab::train::{sft, SftConfig};

/// Two rows, the first packing two examples (positions restart, attention stays within each).
fn packed_batch() -> Batch {
    let row = |n: usize, seed: u32, split: Option<usize>| {
        let input_ids: Vec<u32> = (0..n as u32).map(|j| 3 + (j * 37 + seed) % 250).collect();
        let labels = (0..n as i32)
            .map(|j| if j % 5 == 0 { -100 } else { 3 + (j * 11) % 90 })
            .collect();
        let (position_ids, segment_ids) = match split {
            Some(s) => (
                Some(
                    (0..n)
                        .map(|j| (if j < s { j } else { j - s }) as u32)
                        .collect(),
                ),
                Some((0..n).map(|j| u32::from(j >= s) + 1).collect()),
            ),
            None => (None, None),
        };
        Item {
            input_ids,
            labels,
            position_ids,
            segment_ids,
        }
    };
    let (a, b) = (row(48, 1, Some(20)), row(48, 2, None));
    stack(&[&a, &b], 0, &Device::Cpu).unwrap()
}

/// The loss and gradients of `batch` for `vars`, with or without recomputation, and the next
/// draw of the dropout generator afterwards (None: no dropout).
fn loss_and_grads(
    model: &Model,
    adapter: Option<&Adapter>,
    vars: &[candle_core::Var],
    dropout: f64,
    checkpointing: bool,
) -> (f64, Vec<Tensor>, u64) {
    let generator = RefCell::new(Rng::new(11));
    let dropout = Dropout {
        p: dropout,
        rng: &generator,
    };
    let pass = Pass {
        adapter,
        train: true,
        dropout: Some(&dropout),
        ..Default::default()
    };
    let batch = packed_batch();
    let forward = gradients::forward(model, &batch, pass, 50.0, checkpointing).unwrap();
    let loss = forward.loss().unwrap();
    let grads = forward
        .backward(vars)
        .unwrap()
        .into_iter()
        .map(|g| g.expect("every var has a gradient"))
        .collect();
    let next = generator.borrow_mut().next_u64();
    (loss, grads, next)
}

/// The largest magnitude in `a`.
fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn recomputed_lora_gradients_are_the_whole_graphs_bit_for_bit_dropout_included() {
    let m = tiny();
    let config = LoraConfig {
        targets: LoraConfig::parse_targets(&["all".into()]).unwrap(),
        ..Default::default()
    };
    let adapter = Adapter::new(&m.llama, config, 5, "tiny").unwrap();
    for (_, var) in adapter.named_vars() {
        let noise = Tensor::randn(0f32, 0.05, var.shape(), &Device::Cpu).unwrap();
        var.set(&noise).unwrap();
    }
    let vars: Vec<_> = adapter.named_vars().into_iter().map(|(_, v)| v).collect();
    for dropout in [0.0, 0.1] {
        let (loss, whole, next) = loss_and_grads(&m, Some(&adapter), &vars, dropout, false);
        let (loss_r, recomputed, next_r) = loss_and_grads(&m, Some(&adapter), &vars, dropout, true);
        assert_eq!(loss, loss_r, "dropout {dropout}: the loss");
        for (i, (a, b)) in whole.iter().zip(&recomputed).enumerate() {
            assert!(max_abs(a) > 0.0, "var {i} has a zero gradient");
            assert_eq!(max_diff(a, b), 0.0, "dropout {dropout}: var {i}'s gradient");
        }
        // The generator ends where the whole-graph pass leaves it: the next batch's masks match.
        assert_eq!(next, next_r, "dropout {dropout}: the generator's state");
    }
}

#[test]
fn recomputed_full_and_freeze_gradients_match_the_embedding_included() {
    let base = tiny();
    let layers = base.config().num_hidden_layers;
    // Full: every weight, the tied embedding included. Freeze: the last block only, so the
    // blocks below it are not recomputed at all.
    let freeze = FreezeOptions {
        trainable_layers: 1,
        ..Default::default()
    };
    for (what, options) in [("full", None), ("freeze", Some(freeze))] {
        let selected = trainable::selector(options, layers);
        let trained = Trainable::Weights(trainable::weights(&base, &selected, None).unwrap());
        let m = trained.model(&base);
        let named = trained.named_vars();
        let vars: Vec<_> = named.iter().map(|(_, v)| v.clone()).collect();
        let (loss, whole, _) = loss_and_grads(m, None, &vars, 0.0, false);
        let (loss_r, recomputed, _) = loss_and_grads(m, None, &vars, 0.0, true);
        assert_eq!(loss, loss_r, "{what}");
        let has_embedding = named.iter().any(|(n, _)| n == "model.embed_tokens.weight");
        assert_eq!(has_embedding, what == "full");
        for ((name, _), (a, b)) in named.iter().zip(whole.iter().zip(&recomputed)) {
            let scale = max_abs(a);
            assert!(scale > 0.0, "{what}: {name} has a zero gradient");
            assert!(
                max_diff(a, b) <= 1e-6 * scale,
                "{what}: {name} differs by {} (scale {scale})",
                max_diff(a, b)
            );
        }
    }
}

#[test]
fn a_run_with_gradient_checkpointing_has_the_same_losses_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |name: &str, checkpointing: bool| {
        let lora = LoraConfig {
            dropout: 0.1,
            ..Default::default()
        };
        SftConfig {
            learning_rate: 1e-2,
            max_steps: Some(6),
            batch_size: 4,
            gradient_accumulation_steps: 2,
            cutoff_len: 128,
            logging_steps: 1,
            save_steps: 100,
            lora,
            gradient_checkpointing: checkpointing,
            out: Some(dir.path().join(name)),
            ..Default::default()
        }
    };
    let train = |c: &SftConfig| {
        let cancel = CancelToken::new();
        let out = Output::capture();
        sft(&tiny(), &shipped("identity"), c, quiet_hooks(&cancel, &out)).unwrap()
    };
    let plain = train(&cfg("plain", false));
    let recomputed = train(&cfg("recomputed", true));
    assert_eq!(plain.loss.len(), 6);
    assert_eq!(plain.loss, recomputed.loss);
    let args = std::fs::read_to_string(recomputed.out.join("training_args.json")).unwrap();
    let args: serde_json::Value = serde_json::from_str(&args).unwrap();
    assert_eq!(args["gradient_checkpointing"], true, "{args}");
}
