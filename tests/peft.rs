//! PEFT compatibility, checked against PEFT itself: a small Llama saved by transformers and two
//! adapters saved by PEFT (tests/fixtures/peft, made by make_peft_fixture.py beside them — a
//! q_proj,v_proj subset at r 4, and rsLoRA at r 8 on all seven projections) load in tunelab and
//! give the logits PEFT computed; an adapter tunelab saves reads back to the same logits, with
//! the adapter_config.json keys PEFT writes.

use std::path::{Path, PathBuf};

use candle_core::Device;
use tunelab::lora::{peft, Adapter};
use tunelab::model::{self, Model};

#[path = "support/logits.rs"]
mod compare;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft")
        .join(rel)
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference.json")).unwrap()).unwrap()
}

/// The logits at the reference's position for its prompt.
fn last_logits(m: &Model, adapter: Option<&Adapter>, r: &serde_json::Value) -> Vec<f32> {
    let ids: Vec<u32> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let all = compare::logits(m, &ids, adapter); // T × V, flattened
    let (pos, vocab) = (
        r["position"].as_u64().unwrap() as usize,
        m.config().vocab_size,
    );
    all[pos * vocab..(pos + 1) * vocab].to_vec()
}

fn max_diff(a: &[f32], b: &serde_json::Value) -> f64 {
    let b = b.as_array().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

fn base() -> Model {
    model::load(fixture("base").to_str().unwrap(), &Default::default()).unwrap()
}

#[test]
fn the_transformers_base_gives_transformers_logits() {
    let r = reference();
    let d = max_diff(&last_logits(&base(), None, &r), &r["base"]);
    assert!(d < 1e-4, "max |Δ| {d}");
}

#[test]
fn adapters_saved_by_peft_give_peft_s_logits() {
    let (m, r) = (base(), reference());
    for (name, rank, rslora, targets) in [("qv", 4, false, 2), ("rslora_all", 8, true, 7)] {
        let a = peft::read(&fixture(name), &Device::Cpu).unwrap();
        assert_eq!(a.config.rank, rank, "{name}");
        assert_eq!(a.config.rslora, rslora, "{name}");
        assert_eq!(a.config.targets.len(), targets, "{name}");
        let got = last_logits(&m, Some(&a), &r);
        let d = max_diff(&got, &r["adapters"][name]);
        println!("{name}: max |Δ| against PEFT {d:.2e}");
        assert!(d < 1e-4, "{name}: max |Δ| {d}");
        // …and the adapter matters: the base's logits are far from these.
        assert!(max_diff(&got, &r["base"]) > 1e-2, "{name} changed nothing");
    }
}

#[test]
fn an_adapter_tunelab_saves_has_peft_s_keys_and_reads_back_the_same() {
    let (m, r) = (base(), reference());
    let a = peft::read(&fixture("rslora_all"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    peft::save(&a, dir.path(), false).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"].as_f64(), Some(16.0));
    assert_eq!(cfg["use_rslora"], true);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    let back = peft::read(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(
        last_logits(&m, Some(&back), &r),
        last_logits(&m, Some(&a), &r)
    );
}
