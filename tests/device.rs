//! Every device path, tested once per device: always on the CPU, and on each CUDA device when
//! tunelab is built with `--features cuda` on a machine with a GPU. The reference is the CPU in
//! f32; the candidates are each device in f32 and in the reduced precisions a GPU trains in, so
//! CI (no GPU) still runs the bf16/f16 code paths a GPU takes, on its CPU twin.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::DType;
use tunelab::cancel::CancelToken;
use tunelab::data::{load, LoadOptions as DataOptions};
use tunelab::model::parity::{parity, ParityOptions};
use tunelab::model::{self, LoadOptions, Model};
use tunelab::output::Output;
use tunelab::train::{sft, Hooks, SftConfig};

#[path = "support/smollm2.rs"]
mod support;
use support::smollm2;

/// `cpu`, then every CUDA device this build can open.
fn devices() -> Vec<String> {
    tunelab::version::devices()
}

/// The tiny model on `device` computing in `dtype` throughout, as a GPU does (on the CPU, bf16
/// without the autocast layout).
fn tiny_on(device: &str, dtype: Option<DType>) -> Model {
    tiny_with(device, dtype, false)
}

fn tiny_with(device: &str, dtype: Option<DType>, autocast: bool) -> Model {
    model::load(
        "tiny",
        &LoadOptions {
            device: device.into(),
            dtype,
            autocast,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("tiny on {device} {dtype:?}: {e}"))
}

/// A CPU without AVX512-BF16 (simulated) computes a bf16 request in f32 and says so, instead of
/// running bf16 slowly or failing.
#[test]
fn bf16_without_the_instructions_falls_back_to_f32_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bf16.rhai");
    std::fs::write(
        &script,
        "let m = load_model(\"tiny\", #{ dtype: \"bf16\" }); print(m.config.dtype);\n\
         print(load_model(\"tiny\", #{ dtype: \"bf16\", autocast: false }).config.dtype);",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["run", script.to_str().unwrap()])
        .env("TUNELAB_NO_BF16_KERNEL", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["f32", "bf16"],
        "{stderr}"
    );
    assert!(stderr.contains("no AVX512-BF16 instructions"), "{stderr}");
}

/// bf16 on the CPU as PyTorch's autocast computes it (bf16 weights and products through the
/// AVX512-BF16 kernel, f32 activations): within parity's bf16 bounds, and the rounding shows.
#[test]
fn cpu_bf16_autocast_stays_within_the_bf16_bounds() {
    if !tunelab::model::gemm_bf16::available() {
        eprintln!("skipped: this CPU has no AVX512-BF16 (bf16 computes in bf16 throughout)");
        return;
    }
    let reference = tiny_on("cpu", Some(DType::F32));
    let candidate = tiny_with("cpu", Some(DType::BF16), true);
    assert_eq!(candidate.llama.dtype, DType::F32, "activations");
    assert_eq!(candidate.llama.weights_dtype(), DType::BF16, "weights");
    let p = parity(&reference, &candidate, &ParityOptions::default()).unwrap();
    eprintln!("{p}");
    assert!(p.failures().is_empty(), "{p}");
    assert!(p.logits_rel > 1e-5, "bf16 left no trace: {p}");
    // Closer than bf16 throughout: only the products' inputs are rounded.
    let all_bf16 = parity(
        &reference,
        &tiny_on("cpu", Some(DType::BF16)),
        &Default::default(),
    );
    assert!(p.logits_rel < all_bf16.unwrap().logits_rel, "{p}");
}

#[test]
fn logits_and_lora_gradients_agree_with_the_cpu_f32_reference_on_every_device() {
    let reference = tiny_on("cpu", Some(DType::F32));
    let opts = ParityOptions::default();
    for device in devices() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let candidate = tiny_on(&device, Some(dtype));
            assert_eq!(candidate.llama.dtype, dtype);
            let p = parity(&reference, &candidate, &opts).unwrap();
            eprintln!("{p}");
            assert!(p.failures().is_empty(), "{p}");
            if device == "cpu" && dtype == DType::F32 {
                assert_eq!(p.logits_rel, 0.0, "the same computation twice: {p}");
            } else if dtype != DType::F32 {
                // Reduced precision really ran: its rounding shows.
                assert!(p.logits_rel > 1e-5, "{dtype:?} left no trace: {p}");
            }
        }
    }
}

#[test]
fn parity_catches_a_candidate_that_computes_something_else() {
    let reference = tiny_on("cpu", None);
    let other = model::load(
        "tiny",
        &LoadOptions {
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let p = parity(&reference, &other, &ParityOptions::default()).unwrap();
    assert!(
        !p.failures().is_empty(),
        "other weights passed as equal: {p}"
    );
}

#[test]
fn the_default_dtype_is_f32_on_the_cpu_and_bf16_on_a_gpu() {
    for device in devices() {
        let m = tiny_on(&device, None);
        let expected = if device == "cpu" {
            DType::F32
        } else {
            DType::BF16
        };
        assert_eq!(m.llama.dtype, expected, "{device}");
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn asking_a_cpu_only_build_for_cuda_says_how_to_build_with_it() {
    for name in ["cuda", "cuda:1"] {
        let err = model::load(
            "tiny",
            &LoadOptions {
                device: name.into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
    // "auto" falls back to the CPU.
    let m = model::load(
        "tiny",
        &LoadOptions {
            device: "auto".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(m.llama.device.is_cpu());
}

fn identity() -> tunelab::data::Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let opts = DataOptions {
        dir,
        ..Default::default()
    };
    load("identity", &opts, &CancelToken::new()).unwrap()
}

#[test]
fn a_short_lora_run_lowers_the_loss_on_every_device_with_f32_lora_weights() {
    let data = identity();
    let mut runs: Vec<(String, Option<DType>, bool)> =
        devices().into_iter().map(|d| (d, None, false)).collect();
    // The GPU's mixed precision on the CPU twin: bf16 compute, f32 LoRA weights and optimizer;
    // then the CPU's own bf16 autocast.
    runs.push(("cpu".into(), Some(DType::BF16), false));
    runs.push(("cpu".into(), Some(DType::BF16), true));
    for (device, dtype, autocast) in runs {
        let model = tiny_with(&device, dtype, autocast);
        let dir = tempfile::tempdir().unwrap();
        let cfg = SftConfig {
            learning_rate: 1e-2,
            max_steps: Some(16),
            batch_size: 4,
            gradient_accumulation_steps: 1,
            cutoff_len: 64,
            logging_steps: 2,
            save_steps: 1000,
            out: Some(dir.path().join("run")),
            ..Default::default()
        };
        let cancel = CancelToken::new();
        let out = Output::capture();
        let hooks = Hooks {
            cancel: &cancel,
            on_log: None,
            output: &out,
            progress_bar: false,
            collective: None,
        };
        let run = sft(&model, &data, &cfg, hooks).unwrap();
        let first = run.loss.first().unwrap().1;
        let last = run.loss.last().unwrap().1;
        eprintln!(
            "{device} {:?}: loss {first:.4} → {last:.4}",
            model.llama.dtype
        );
        assert!(
            last < first * 0.8,
            "{device} {dtype:?}: loss {first} → {last}: {:?}",
            run.loss
        );
        for (name, var) in run.adapter.as_ref().unwrap().named_vars() {
            assert_eq!(var.dtype(), DType::F32, "{name} on {device}");
        }
    }
}

/// The GPU check script (scripts/gpu/check.rhai, run by scripts/gpu-check.sh on a GPU machine)
/// run on its CPU twin with small settings, so it cannot rot where no GPU tests it: every check
/// passes and the benchmark line is JSON.
#[test]
fn the_gpu_check_script_passes_on_the_cpu() {
    let Some(model) = smollm2() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["run", "scripts/gpu/check.rhai", "--", "device=cpu"])
        .arg(format!("model={}", model.display()))
        .args([
            "sft_steps=12",
            "sft_lr=2e-3",
            "bench_steps=1",
            "bench_batch=1",
            "bench_seq=32",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHECK ok"), "{stdout}");
    assert_eq!(stdout.matches("PARITY ").count(), 4, "{stdout}");
    let bench = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .expect("a BENCH line");
    let bench: serde_json::Value = serde_json::from_str(bench).unwrap();
    assert!(bench["tokens_per_s"].as_f64().unwrap() > 0.0);
}
