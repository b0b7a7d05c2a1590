//! LoRA fine-tuning on the tiny model: the adapter's math (a zero B changes nothing, gradients
//! match finite differences, QLoRA gradients cross quantized layers), and whole runs (the loss
//! falls, runs are bit-for-bit reproducible, a stopped run resumed ends where an uninterrupted
//! one does, the run folder has LLaMA-Factory's files).

#[path = "support/tiny.rs"]
mod tiny;

use std::cell::RefCell;
use std::path::PathBuf;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tiny::{max_diff, quiet_hooks, shipped, tiny};
use tunelab::cancel::CancelToken;
use tunelab::lora::{Adapter, Dropout, LoraConfig};
use tunelab::model::linear::Linear;
use tunelab::model::{Logits, Model, Pass};
use tunelab::output::Output;
use tunelab::rng::Rng;
use tunelab::train::{sft, Hooks, Run, SftConfig};

fn ids() -> Tensor {
    Tensor::new(
        &[
            [5u32, 100, 200, 300, 42, 7, 900, 12],
            [1, 2, 3, 4, 5, 6, 7, 8],
        ],
        &Device::Cpu,
    )
    .unwrap()
}

/// Inference logits of `m` on [`ids`] with `adapter` applied.
fn adapted(m: &Model, adapter: &Adapter, which: Logits) -> Tensor {
    let pass = Pass {
        adapter: Some(adapter),
        ..Default::default()
    };
    m.llama
        .forward_with(&ids(), None, None, which, pass)
        .unwrap()
}

/// A random non-zero B so the adapter matters.
fn perturb(adapter: &Adapter, seed: u64) {
    let mut rng = Rng::new(seed);
    for (name, var) in adapter.named_vars() {
        if name.contains("lora_B") {
            let n = var.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|_| (rng.next_f64() as f32 - 0.5) * 0.2)
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

#[test]
fn a_fresh_adapter_changes_nothing_and_training_forward_matches_inference() {
    let m = tiny();
    let adapter = Adapter::new(&m.llama, LoraConfig::default(), 1, "tiny").unwrap();
    let base = m.llama.forward(&ids(), None, None, Logits::All).unwrap();
    let with_adapter = adapted(&m, &adapter, Logits::All);
    assert_eq!(
        max_diff(&base, &with_adapter),
        0.0,
        "B = 0 must leave the logits unchanged"
    );

    // The differentiable training pass computes the same logits (for every position).
    perturb(&adapter, 3);
    let with_adapter = adapted(&m, &adapter, Logits::All);
    let positions: Vec<u32> = (0..2).flat_map(|_| 0..8u32).collect();
    let rows = Tensor::arange(0u32, 16, &Device::Cpu).unwrap();
    let train_pass = Pass {
        adapter: Some(&adapter),
        train: true,
        dropout: None,
        ..Default::default()
    };
    let trained = m
        .llama
        .forward_train(&ids(), &positions, None, &rows, train_pass)
        .unwrap();
    let d = max_diff(&with_adapter.reshape((16, ())).unwrap(), &trained);
    assert!(d < 1e-4, "training forward differs from inference by {d}");
    assert!(
        max_diff(&base, &with_adapter) > 1e-3,
        "a non-zero B must change the logits"
    );
}

/// Loss of the tiny model with `adapter` on a fixed batch.
fn loss_of(m: &Model, adapter: &Adapter) -> Tensor {
    let positions: Vec<u32> = (0..2).flat_map(|_| 0..8u32).collect();
    let rows = Tensor::new(&[1u32, 2, 3, 9, 10, 14], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[200u32, 300, 42, 3, 4, 8], &Device::Cpu).unwrap();
    let rng = RefCell::new(Rng::new(0));
    let dropout = Dropout { p: 0.0, rng: &rng };
    let pass = Pass {
        adapter: Some(adapter),
        train: true,
        dropout: Some(&dropout),
        ..Default::default()
    };
    let logits = m
        .llama
        .forward_train(&ids(), &positions, None, &rows, pass)
        .unwrap();
    tunelab::train::loss::cross_entropy_sum(&logits, &targets)
        .unwrap()
        .0
}

fn check_gradients(m: &Model, adapter: &Adapter) {
    let loss = loss_of(m, adapter);
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in adapter.named_vars() {
        // First, middle and last blocks; A and B of q and down.
        if !(name.contains("layers.0.") || name.contains("layers.3."))
            || !(name.contains("q_proj") || name.contains("down_proj"))
        {
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for &i in &[0usize, w.len() / 3, w.len() - 1] {
            let eps = 1e-2f32;
            let shifted = |delta: f32| {
                let mut v = w.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let l = loss_of(m, adapter).to_scalar::<f32>().unwrap();
                var.set(&Tensor::from_vec(w.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                l
            };
            let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
            let tol = 2e-3 + 2e-2 * numeric.abs().max(g[i].abs());
            assert!(
                (numeric - g[i]).abs() < tol,
                "{name}[{i}]: analytic {} vs finite difference {numeric}",
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "checked {checked}");
}

#[test]
fn lora_gradients_match_finite_differences() {
    let m = tiny();
    let adapter = Adapter::new(&m.llama, LoraConfig::default(), 1, "tiny").unwrap();
    perturb(&adapter, 5);
    check_gradients(&m, &adapter);
}

/// The tiny model with every projection quantized to Q8_0 (QLoRA's frozen base).
fn quantized_tiny() -> Model {
    let m = tiny();
    let mut llama = m.llama.clone();
    let q = |l: &Linear| {
        let w = l.dense_weight().unwrap();
        Linear::quantized(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap(), None).unwrap()
    };
    for b in &mut llama.blocks {
        for l in [
            &mut b.q,
            &mut b.k,
            &mut b.v,
            &mut b.o,
            &mut b.gate,
            &mut b.up,
            &mut b.down,
        ] {
            *l = q(l);
        }
    }
    let mut parts = Model::clone(&m);
    let _ = &mut parts;
    tunelab::model::Model::new(tunelab::model::ModelParts {
        llama,
        tokenizer: m.tokenizer.clone(),
        chat_template: m.chat_template.clone(),
        source: "tiny (Q8_0)".into(),
        format: "tiny",
        quantized: true,
        stop_ids: m.stop_ids.clone(),
        add_bos: m.add_bos,
        bos_token: m.bos_token.clone(),
        eos_token: m.eos_token.clone(),
    })
}

#[test]
fn qlora_gradients_cross_frozen_quantized_layers() {
    let m = quantized_tiny();
    let adapter = Adapter::new(&m.llama, LoraConfig::default(), 1, "tiny").unwrap();
    perturb(&adapter, 5);
    check_gradients(&m, &adapter);
}

/// The run's final adapter is exactly the one saved at `checkpoint-{step}` (same logits).
fn assert_adapter_is_checkpoint(run: &Run, step: usize) {
    let m = tiny();
    let saved =
        tunelab::lora::peft::load(&run.out.join(format!("checkpoint-{step}")), &m.llama).unwrap();
    let x = adapted(&m, run.adapter.as_ref().unwrap(), Logits::Last);
    let y = adapted(&m, &saved, Logits::Last);
    assert_eq!(max_diff(&x, &y), 0.0);
}

fn tiny_cfg(out: PathBuf) -> SftConfig {
    SftConfig {
        learning_rate: 1e-2,
        num_train_epochs: 5.0,
        batch_size: 4,
        gradient_accumulation_steps: 1,
        cutoff_len: 256,
        logging_steps: 2,
        save_steps: 10,
        out: Some(out),
        ..Default::default()
    }
}

fn train(cfg: &SftConfig) -> Run {
    let ds = shipped("identity");
    let cancel = CancelToken::new();
    let out = Output::capture();
    sft(&tiny(), &ds, cfg, quiet_hooks(&cancel, &out)).unwrap()
}

#[test]
fn a_tiny_run_lowers_the_loss_and_writes_llamafactory_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(&tiny_cfg(dir.path().join("run")));
    let first = run.loss.first().unwrap().1;
    let last = run.loss.last().unwrap().1;
    // Documented margin: at least 20% lower after two epochs on the shipped English data.
    eprintln!("tiny identity run: {:?}", run.loss);
    assert!(last < first * 0.8, "loss {first} → {last}: {:?}", run.loss);
    assert_eq!(run.steps, run.total_steps);
    let log = std::fs::read_to_string(run.out.join("trainer_log.jsonl")).unwrap();
    let first_line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for key in [
        "current_steps",
        "total_steps",
        "loss",
        "lr",
        "epoch",
        "percentage",
        "elapsed_time",
        "remaining_time",
        "throughput",
        "total_tokens",
    ] {
        assert!(
            first_line.get(key).is_some(),
            "trainer_log.jsonl lacks {key}: {first_line}"
        );
    }
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_args.json",
    ] {
        assert!(run.out.join(f).is_file(), "{f} missing");
    }
    assert!(run
        .out
        .join("checkpoint-10/optimizer.safetensors")
        .is_file());
    // The saved adapter reloads and gives the same logits.
    let m = tiny();
    let back = tunelab::lora::peft::load(&run.out, &m.llama).unwrap();
    let a = adapted(&m, run.adapter.as_ref().unwrap(), Logits::Last);
    let b = adapted(&m, &back, Logits::Last);
    assert_eq!(max_diff(&a, &b), 0.0);
    // The same folder is not overwritten without resume.
    let again = sft(
        &tiny(),
        &shipped("identity"),
        &tiny_cfg(run.out.clone()),
        quiet_hooks(&CancelToken::new(), &Output::capture()),
    );
    assert!(again.unwrap_err().to_string().contains("resume: true"));
}

#[test]
fn runs_are_reproducible_and_resume_where_they_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let full = train(&tiny_cfg(dir.path().join("full")));
    let again = train(&tiny_cfg(dir.path().join("again")));
    assert_eq!(full.loss, again.loss, "same seed, same losses");

    // Stop after step 6 through on_log, then resume.
    let cfg = tiny_cfg(dir.path().join("stopped"));
    let ds = shipped("identity");
    let cancel = CancelToken::new();
    let out = Output::capture();
    let mut stop_at_6 = |ev: &serde_json::Map<String, serde_json::Value>| -> tunelab::Result<bool> {
        Ok(ev["current_steps"].as_u64() != Some(6))
    };
    let hooks = Hooks {
        on_log: Some(&mut stop_at_6),
        cancel: &cancel,
        output: &out,
        progress_bar: false,
        collective: None,
    };
    let stopped = sft(&tiny(), &ds, &cfg, hooks).unwrap();
    assert_eq!(stopped.steps, 6);
    assert!(stopped.out.join("checkpoint-6").is_dir());
    let resumed = train(&SftConfig {
        resume: true,
        ..cfg
    });
    assert_eq!(resumed.steps, full.steps);
    assert_eq!(resumed.loss, full.loss, "resumed run's losses differ");
    let log = std::fs::read_to_string(resumed.out.join("trainer_log.jsonl")).unwrap();
    let full_log = std::fs::read_to_string(full.out.join("trainer_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), full_log.lines().count());
}

#[test]
fn cancelling_keeps_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_cfg(dir.path().join("cancelled"));
    let ds = shipped("identity");
    let cancel = CancelToken::new();
    let out = Output::capture();
    let c2 = cancel.clone();
    let mut cancel_at_3 =
        |ev: &serde_json::Map<String, serde_json::Value>| -> tunelab::Result<bool> {
            if ev["current_steps"].as_u64() == Some(2) {
                c2.cancel(); // as Ctrl-C would, in the middle of the next step
            }
            Ok(true)
        };
    let hooks = Hooks {
        on_log: Some(&mut cancel_at_3),
        cancel: &cancel,
        output: &out,
        progress_bar: false,
        collective: None,
    };
    let err = sft(&tiny(), &ds, &cfg, hooks).unwrap_err();
    assert!(matches!(err, tunelab::Error::Cancelled), "{err}");
    assert!(dir
        .path()
        .join("cancelled/checkpoint-2/adapter_model.safetensors")
        .is_file());
    assert!(
        out.captured().contains("resume: true"),
        "{}",
        out.captured()
    );
}

#[test]
fn early_stopping_keeps_the_best_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = shipped("identity");
    let parts = data.split(8, 1);
    let cfg = SftConfig {
        // A rate far too high: the eval loss soon stops improving.
        learning_rate: 0.2,
        eval_dataset: Some(parts.1.clone()),
        eval_steps: Some(1),
        logging_steps: 1,
        early_stopping_patience: Some(2),
        ..tiny_cfg(dir.path().join("early"))
    };
    let cancel = CancelToken::new();
    let out = Output::capture();
    let run = sft(&tiny(), &parts.0, &cfg, quiet_hooks(&cancel, &out)).unwrap();
    assert_eq!(
        run.stopped,
        tunelab::train::StopReason::EarlyStopped,
        "{}",
        out.captured()
    );
    let best = run.best_step.unwrap();
    assert!(best < run.steps && run.steps < run.total_steps);
    let best_loss = run.eval_loss.iter().find(|(s, _)| *s == best).unwrap().1;
    assert!(run.eval_loss.iter().all(|(_, l)| *l >= best_loss));
    // The run's adapter is the best checkpoint's.
    assert_adapter_is_checkpoint(&run, best);
}

/// The acceptance run: tiny data, many epochs, validation on. The diagnosis calls it
/// overfitting at the eval minimum, warns live, and early stopping keeps that step's adapter.
#[test]
fn an_overfitting_run_is_diagnosed_and_early_stopping_keeps_its_best_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = shipped("instruct_en").shuffle(3).take(24);
    let cfg = SftConfig {
        learning_rate: 1e-2,
        num_train_epochs: 40.0,
        val_size: 0.25,
        eval_steps: Some(10),
        logging_steps: 1,
        early_stopping_patience: Some(3),
        ..tiny_cfg(dir.path().join("overfit"))
    };
    let cancel = CancelToken::new();
    let out = Output::capture();
    let run = sft(&tiny(), &data, &cfg, quiet_hooks(&cancel, &out)).unwrap();
    let printed = out.captured();
    let d = &run.diagnosis;
    assert_eq!(
        d.verdict,
        tunelab::curves::Verdict::Overfitting,
        "{d}\n{printed}"
    );
    assert_eq!(d.best_step, run.best_step, "{d}");
    let best = run.best_step.unwrap();
    assert!(
        printed.contains(&format!("warning: overfitting since step {best}")),
        "{printed}"
    );
    assert_eq!(run.stopped, tunelab::train::StopReason::EarlyStopped);
    assert_adapter_is_checkpoint(&run, best);
    // LLaMA-Factory's plots are in the run folder.
    for f in ["training_loss.png", "training_eval_loss.png"] {
        assert!(run.out.join(f).is_file(), "{f} missing");
    }
    assert!(format!("{run}").contains("verdict: overfitting"), "{run}");
}

#[test]
fn merging_folds_the_adapter_into_the_weights() {
    let m = tiny();
    let adapter = Adapter::new(&m.llama, LoraConfig::default(), 1, "tiny").unwrap();
    perturb(&adapter, 9);
    let with_adapter = adapted(&m, &adapter, Logits::All);
    let merged = tunelab::lora::merge::merge(&m, &adapter).unwrap();
    let folded = merged
        .llama
        .forward(&ids(), None, None, Logits::All)
        .unwrap();
    let d = max_diff(&with_adapter, &folded);
    assert!(d < 1e-4, "merged logits differ by {d}");
    let base = m.llama.forward(&ids(), None, None, Logits::All).unwrap();
    assert!(
        max_diff(&base, &with_adapter) > 1e-3,
        "the base must be unchanged and differ"
    );
    assert!(merged.source.contains("merged"));
}

#[test]
fn neat_packing_keeps_examples_apart() {
    use tunelab::data::encode::{pack, Encoded, IGNORE};
    use tunelab::train::batch::{stack, Item};
    let m = tiny();
    let e = |ids: Vec<u32>| Encoded {
        labels: ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if i < 2 { IGNORE } else { t as i32 })
            .collect(),
        input_ids: ids,
    };
    let (a, b) = (e(vec![5, 17, 300, 41, 9, 77]), e(vec![8, 600, 12, 13, 900]));
    let logits_of = |items: &[&Item]| {
        let batch = stack(items, 0, &Device::Cpu).unwrap();
        m.llama
            .forward_train(
                &batch.ids,
                &batch.positions,
                batch.segments.as_deref(),
                &batch.rows,
                Pass::default(),
            )
            .unwrap()
    };
    let separate = Tensor::cat(
        &[
            logits_of(&[&Item::from(a.clone())]),
            logits_of(&[&Item::from(b.clone())]),
        ],
        0,
    )
    .unwrap();
    let (rows, _) = pack(vec![a.clone(), b.clone()], 16, 0, true);
    let packed = logits_of(&[&Item::packed(rows[0].clone(), true)]);
    // The knapsack takes the longer example (a) first, so the rows line up with [a, b].
    let d = max_diff(&separate, &packed);
    assert!(d < 1e-4, "packed logits differ from separate ones by {d}");
    // Plain packing lets the second example see the first, so its logits change.
    let (rows, _) = pack(vec![a, b], 16, 0, false);
    let plain = logits_of(&[&Item::packed(rows[0].clone(), false)]);
    let d2 = max_diff(&separate, &plain);
    assert!(
        d2 > 1e-4,
        "plain packing should let examples attend to each other"
    );
}

#[test]
fn a_lowrank_start_begins_at_the_compensation_and_only_on_its_base() {
    use tunelab::quant::lowrank::{lowrank, LowRankOptions, Scale};
    let reference = tiny();
    let q = quantized_tiny();
    let cancel = CancelToken::new();
    let opts = LowRankOptions {
        rank: 4,
        scale: Scale::Identity,
        iters: 2,
        ..Default::default()
    };
    let loft = lowrank(&q, &reference, &opts, &cancel, &mut |_, _| {}).unwrap();
    let base = loft.base.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = SftConfig {
        // A step too small to move anything: the run's adapter is its start.
        learning_rate: 1e-30,
        max_steps: Some(1),
        lora: LoraConfig {
            rank: 4,
            alpha: 16.0,
            ..Default::default()
        },
        lora_init: Some(loft.adapter.clone()),
        ..tiny_cfg(dir.path().join("run"))
    };
    let ds = shipped("identity");
    let out = Output::capture();
    let run = sft(&base, &ds, &cfg, quiet_hooks(&cancel, &out)).unwrap();
    let scale = run.adapter.as_ref().unwrap().config.scale();
    assert_eq!(scale, 4.0);
    for (i, pairs) in run.adapter.as_ref().unwrap().layers.iter().enumerate() {
        for (p, want) in pairs.iter().zip(&loft.adapter.layers[i]) {
            let (p, want) = (p.as_ref().unwrap(), want.as_ref().unwrap());
            let got = (p.b.as_tensor().matmul(p.a.as_tensor()).unwrap() * scale).unwrap();
            let want = want.b.as_tensor().matmul(want.a.as_tensor()).unwrap();
            let size = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(max_diff(&got, &want) <= 1e-5 * size.max(1e-6));
        }
    }
    // LoftQ re-quantized the base: starting on the original one is refused.
    let cfg = SftConfig {
        out: Some(dir.path().join("run2")),
        ..cfg
    };
    let e = sft(&q, &ds, &cfg, quiet_hooks(&cancel, &out)).unwrap_err();
    assert!(e.to_string().contains("adapter.base"), "{e}");
}
