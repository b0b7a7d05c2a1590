//! Training in low precision on the tiny model (issue 22): full and freeze fine-tuning (weight
//! gradients against finite differences, what freeze selects, a whole run whose saved folder
//! reloads), bitsandbytes' 8-bit AdamW against the real package's numbers, and resume
//! exactness in every mode (8-bit moments, QSGD's draws, error feedback's residual).

#[path = "support/tiny.rs"]
mod tiny;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use tiny::{quiet_hooks, shipped, tiny};
use tunelab::cancel::CancelToken;
use tunelab::lora::Dropout;
use tunelab::model::{self, Logits, Model, Pass};
use tunelab::output::Output;
use tunelab::rng::Rng;
use tunelab::train::config::Optim;
use tunelab::train::dynamic_map::{dynamic_map, Blockwise8};
use tunelab::train::grad_quant::{Fp8Format, GradQuant, QsgdLevels, QsgdNorm, SignMagnitude};
use tunelab::train::optim::{AdamParams, Optimizer};
use tunelab::train::trainable::{self, FinetuningType, FreezeOptions};
use tunelab::train::{sft, Hooks, Run, SftConfig};

/// Summed token loss of `m` (no adapter) on a fixed batch, differentiable.
fn loss_of(m: &Model) -> Tensor {
    let ids = Tensor::new(
        &[
            [5u32, 100, 200, 300, 42, 7, 900, 12],
            [1, 2, 3, 4, 5, 6, 7, 8],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let positions: Vec<u32> = (0..2).flat_map(|_| 0..8u32).collect();
    let rows = Tensor::new(&[1u32, 2, 3, 9, 10, 14], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[200u32, 300, 42, 3, 4, 8], &Device::Cpu).unwrap();
    let rng = RefCell::new(Rng::new(0));
    let dropout = Dropout { p: 0.0, rng: &rng };
    let pass = Pass {
        train: true,
        dropout: Some(&dropout),
        ..Default::default()
    };
    let logits = m
        .llama
        .forward_train(&ids, &positions, None, &rows, pass)
        .unwrap();
    tunelab::train::loss::cross_entropy_sum(&logits, &targets)
        .unwrap()
        .0
}

/// Compare the analytic gradient of three elements of each var `check` names with central
/// differences of the loss.
fn check_weight_gradients(m: &Model, vars: &[(String, Var)], check: &[&str]) -> usize {
    let grads = loss_of(m).backward().unwrap();
    let mut checked = 0;
    for (name, var) in vars {
        if !check.iter().any(|c| name == c) {
            continue;
        }
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // The largest gradient, and two fixed places.
        let biggest = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for &i in &[biggest, w.len() / 3, w.len() - 1] {
            let eps = 1e-2f32;
            let shifted = |delta: f32| {
                let mut v = w.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let l = loss_of(m).to_scalar::<f32>().unwrap();
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
    checked
}

#[test]
fn full_fine_tuning_gradients_match_finite_differences() {
    let base = tiny();
    let w = trainable::weights(&base, &|_| true, None).unwrap();
    // Every weight trains: embeddings (tied to the output head), norms, projections.
    assert_eq!(w.vars.len(), 1 + 4 * 9 + 1);
    let checked = check_weight_gradients(
        &w.model,
        &w.vars,
        &[
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.2.self_attn.k_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
            "model.layers.3.post_attention_layernorm.weight",
            "model.norm.weight",
        ],
    );
    assert_eq!(checked, 21);
}

#[test]
fn freeze_trains_only_the_chosen_blocks_and_their_gradients_are_right() {
    let base = tiny();
    let freeze = FreezeOptions {
        trainable_layers: 1,
        trainable_modules: vec!["mlp".into(), "post_attention_layernorm".into()],
        extra_modules: vec!["norm".into()],
    };
    let w = trainable::weights(&base, &|n: &str| freeze.selects(n, 4), None).unwrap();
    let names: Vec<&str> = w.vars.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "model.layers.3.post_attention_layernorm.weight",
            "model.layers.3.mlp.gate_proj.weight",
            "model.layers.3.mlp.up_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
            "model.norm.weight",
        ]
    );
    let checked = check_weight_gradients(
        &w.model,
        &w.vars,
        &["model.layers.3.mlp.gate_proj.weight", "model.norm.weight"],
    );
    assert_eq!(checked, 6);
    // The base is untouched: its weights are no variables, and the copy computes the same (to
    // rounding: a trained norm runs the composed op instead of the fused one).
    assert!(!base.llama.blocks[3].mlp_norm.is_variable());
    let a = loss_of(&base).to_scalar::<f32>().unwrap();
    let b = loss_of(&w.model).to_scalar::<f32>().unwrap();
    assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
}

fn cfg(out: PathBuf) -> SftConfig {
    SftConfig {
        learning_rate: 1e-3,
        max_steps: Some(6),
        batch_size: 4,
        gradient_accumulation_steps: 1,
        cutoff_len: 256,
        logging_steps: 1,
        save_steps: 100,
        plot_loss: false,
        out: Some(out),
        ..Default::default()
    }
}

fn train(cfg: &SftConfig) -> Run {
    let cancel = CancelToken::new();
    let out = Output::capture();
    sft(
        &tiny(),
        &shipped("identity"),
        cfg,
        quiet_hooks(&cancel, &out),
    )
    .unwrap()
}

fn last_logits(m: &Model) -> Tensor {
    let ids = Tensor::new(&[[5u32, 100, 200, 300]], &Device::Cpu).unwrap();
    m.llama
        .forward_with(&ids, None, None, Logits::Last, Pass::default())
        .unwrap()
}

#[test]
fn a_full_run_lowers_the_loss_and_leaves_a_loadable_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = train(&SftConfig {
        finetuning_type: FinetuningType::Full,
        max_steps: Some(12),
        ..cfg(dir.path().join("full"))
    });
    let first = run.loss.first().unwrap().1;
    let last = run.loss.last().unwrap().1;
    assert!(last < first * 0.9, "loss {first} → {last}");
    assert!(run.adapter.is_none());
    let trained = run.model.as_ref().unwrap();
    // The finished model is plain weights (a later run sees them frozen).
    assert!(!trained.llama.embed.is_variable());
    // f32 AdamW: two moments per parameter.
    assert_eq!(run.optimizer_state_bytes, 8 * tiny().num_params());
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training_args.json",
    ] {
        assert!(run.out.join(f).is_file(), "{f} missing");
    }
    let back = model::load(run.out.to_str().unwrap(), &Default::default()).unwrap();
    let (a, b) = (last_logits(trained), last_logits(&back));
    let diff = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    // And it differs from where it started.
    let start = last_logits(&tiny());
    let moved = (start - b).unwrap().abs().unwrap().max_all().unwrap();
    assert!(moved.to_scalar::<f32>().unwrap() > 1e-3);
}

/// Stop `cfg`'s run after step 3 through on_log, resume it, and compare with the uninterrupted
/// run: the same losses, step for step.
fn assert_resumes_exactly(what: &str, cfg: SftConfig) -> Run {
    let whole = train(&cfg);
    let dir = cfg.out.clone().unwrap().with_extension("stopped");
    let stopped_cfg = SftConfig {
        out: Some(dir),
        ..cfg
    };
    let cancel = CancelToken::new();
    let out = Output::capture();
    let mut stop_at_3 = |ev: &serde_json::Map<String, serde_json::Value>| -> tunelab::Result<bool> {
        Ok(ev["current_steps"].as_u64() != Some(3))
    };
    let hooks = Hooks {
        on_log: Some(&mut stop_at_3),
        cancel: &cancel,
        output: &out,
        progress_bar: false,
        collective: None,
    };
    let stopped = sft(&tiny(), &shipped("identity"), &stopped_cfg, hooks).unwrap();
    assert_eq!(stopped.steps, 3, "{what}");
    let resumed = train(&SftConfig {
        resume: true,
        ..stopped_cfg
    });
    assert_eq!(
        resumed.loss, whole.loss,
        "{what}: the resumed run's losses differ"
    );
    whole
}

#[test]
fn every_low_precision_mode_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let modes: Vec<(&str, SftConfig)> = vec![
        (
            "full",
            SftConfig {
                finetuning_type: FinetuningType::Full,
                ..cfg(dir.path().join("full"))
            },
        ),
        (
            "freeze + 8-bit AdamW",
            SftConfig {
                finetuning_type: FinetuningType::Freeze,
                optim: Optim::AdamW8bit { block: 256 },
                ..cfg(dir.path().join("freeze8"))
            },
        ),
        (
            "lora + QSGD (exponential levels)",
            SftConfig {
                grad_quant: Some(GradQuant::Qsgd {
                    bits: 4,
                    bucket: 64,
                    norm: QsgdNorm::Max,
                    levels: QsgdLevels::Exponential,
                }),
                ..cfg(dir.path().join("qsgd"))
            },
        ),
        (
            "full + sign with error feedback",
            SftConfig {
                finetuning_type: FinetuningType::Full,
                grad_quant: Some(GradQuant::Sign {
                    error_feedback: true,
                    block: None,
                    magnitude: SignMagnitude::Mean,
                }),
                ..cfg(dir.path().join("sign"))
            },
        ),
        (
            "full + SGD + block-scaled sign with error feedback",
            SftConfig {
                finetuning_type: FinetuningType::Full,
                optim: Optim::Sgd,
                learning_rate: 0.05,
                grad_quant: Some(GradQuant::Sign {
                    error_feedback: true,
                    block: Some(64),
                    magnitude: SignMagnitude::Mean,
                }),
                ..cfg(dir.path().join("sgd"))
            },
        ),
        (
            "lora + fp8",
            SftConfig {
                grad_quant: Some(GradQuant::Fp8 {
                    format: Fp8Format::E5M2,
                    block: Some(128),
                }),
                ..cfg(dir.path().join("fp8"))
            },
        ),
    ];
    for (what, c) in modes {
        let run = assert_resumes_exactly(what, c);
        assert_eq!(run.steps, 6, "{what}");
        let log = std::fs::read_to_string(run.out.join("trainer_log.jsonl")).unwrap();
        if what.contains("QSGD") {
            let first: serde_json::Value =
                serde_json::from_str(log.lines().next().unwrap()).unwrap();
            let bits = first["grad_bits"].as_f64().unwrap();
            assert!((bits - (4.0 + 32.0 / 64.0)).abs() < 0.05, "{bits}");
        }
    }
}

#[test]
fn eight_bit_adamw_keeps_a_quarter_of_the_state_and_follows_f32_adamw() {
    let dir = tempfile::tempdir().unwrap();
    let f32_run = train(&SftConfig {
        finetuning_type: FinetuningType::Full,
        ..cfg(dir.path().join("f32"))
    });
    let q_run = train(&SftConfig {
        finetuning_type: FinetuningType::Full,
        optim: Optim::AdamW8bit { block: 2048 },
        ..cfg(dir.path().join("q"))
    });
    let ratio = q_run.optimizer_state_bytes as f64 / f32_run.optimizer_state_bytes as f64;
    assert!(ratio < 0.3, "8-bit state is {ratio:.3} of f32's");
    let (a, b) = (f32_run.loss.last().unwrap().1, q_run.loss.last().unwrap().1);
    assert!((a - b).abs() < 0.02 * a, "final loss f32 {a} vs 8-bit {b}");
}

/// The fixture written by the real bitsandbytes (tests/fixtures/train/make_adamw8bit_vectors.py).
fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/train/adamw8bit_vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn bytes(v: &serde_json::Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect()
}

#[test]
fn the_dynamic_maps_and_blockwise_codes_match_bitsandbytes() {
    let f = fixture();
    // The maps agree to float rounding (a few units in the last place): PyTorch's linspace
    // rounds its steps in an order that depends on the SIMD width of the machine that ran it, so
    // no single map is "the" reference below that.
    for (signed, key) in [(true, "signed"), (false, "unsigned")] {
        let want = floats(&f["maps"][key]);
        for (x, y) in dynamic_map(signed).iter().zip(&want) {
            assert!((x - y).abs() <= 4e-7 * y.abs(), "{key} map: {x} vs {y}");
        }
    }
    // Quantizing with bitsandbytes' own map gives its scales exactly, and its codes but for a
    // neighbour now and then: tunelab (like bitsandbytes' CUDA and Triton kernels) takes the
    // nearest code; its CPU kernel finds the code to the left with an approximate table search
    // (BinSearch's Direct2) that is one off for about 0.2% of values.
    let values = floats(&f["blockwise"]["values"]);
    let map = floats(&f["maps"]["signed"]);
    for block in [256usize, 2048] {
        let want = &f["blockwise"][block.to_string()];
        let q = Blockwise8::quantize(&values, block, &map);
        assert_eq!(q.absmax, floats(&want["absmax"]), "block {block}");
        let want_codes = bytes(&want["codes"]);
        let mut differ = 0;
        for (i, (&got, &bnb)) in q.codes.iter().zip(&want_codes).enumerate() {
            if got == bnb {
                continue;
            }
            differ += 1;
            assert_eq!((got as i32 - bnb as i32).abs(), 1, "value {i}");
        }
        assert!(
            differ <= values.len() / 200,
            "block {block}: {differ} codes differ"
        );
    }
}

#[test]
fn eight_bit_adamw_follows_bitsandbytes_step_by_step() {
    let f = fixture();
    let a = &f["adamw8bit"];
    let device = Device::Cpu;
    let var = Var::from_slice(&floats(&a["param0"]), 5000, &device).unwrap();
    let params = AdamParams {
        beta1: a["beta1"].as_f64().unwrap(),
        beta2: a["beta2"].as_f64().unwrap(),
        eps: a["eps"].as_f64().unwrap(),
        weight_decay: a["weight_decay"].as_f64().unwrap(),
    };
    let block = a["block"].as_u64().unwrap() as usize;
    let mut optim = Optimizer::new_8bit(vec![var.clone()], params, block).unwrap();
    let lr = a["lr"].as_f64().unwrap();
    for (step, (g, want)) in a["grads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(a["params"].as_array().unwrap())
        .enumerate()
    {
        let g = Tensor::from_slice(&floats(g), 5000, &device).unwrap();
        optim.step(&[g], lr).unwrap();
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        // Equal to float precision, except where a moment's code is the other neighbour (see
        // the test above; the maps' last-bit differences add a few): there the step differs by a
        // fraction of lr, and the difference carries into later steps.
        let want = floats(want);
        let close = got
            .iter()
            .zip(&want)
            .filter(|(x, y)| (*x - *y).abs() < 1e-5)
            .count();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            close as f64 >= 0.95 * want.len() as f64 && worst < 0.5 * lr as f32,
            "step {}: {close} of {} parameters equal, largest difference {worst}",
            step + 1,
            want.len()
        );
    }
    let state = optim.state_tensors(&["p".to_string()]).unwrap();
    let state: HashMap<String, Tensor> = state.into_iter().collect();
    for (key, codes, absmax) in [
        ("exp_avg.p", "state1", "absmax1"),
        ("exp_avg_sq.p", "state2", "absmax2"),
    ] {
        let got: Vec<u8> = state[key].to_vec1().unwrap();
        let want = bytes(&a[codes]);
        let same = got.iter().zip(&want).filter(|(x, y)| x == y).count();
        assert!(
            same as f64 >= 0.98 * want.len() as f64,
            "{key}: {same} of {} codes equal",
            want.len()
        );
        let got: Vec<f32> = state[&format!("{key}.absmax")].to_vec1().unwrap();
        let close = got
            .iter()
            .zip(floats(&a[absmax]))
            .filter(|(x, y)| (*x - y).abs() <= 1e-5 * y.abs())
            .count();
        assert!(
            close + 1 >= got.len(),
            "{key}: {close} of {} absmax equal: {:?} vs {:?}",
            got.len(),
            &got[..3],
            &floats(&a[absmax])[..3]
        );
    }
}
