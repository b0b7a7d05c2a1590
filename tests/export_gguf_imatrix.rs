//! Quantizing with an importance matrix as `llama-quantize --imatrix` does: SmolLM2 exported by
//! tunelab with llama-imatrix's matrix gives every tensor the type and the bytes llama-quantize
//! gives it from the same f32 values, and the same `quantize.imatrix.*` keys
//! (tests/fixtures/quant/smollm2_imatrix_presets.json and smollm2.imatrix.gguf, made by
//! make_smollm2_imatrix_expected.sh), for all ten presets recorded (about 2 minutes).
//! Then `tunelab quantize … --imatrix FILE` on the tiny model: the keys land in the file, a
//! missing or garbled matrix is one line and a failing status, and Q2_K_S without one is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tunelab::gguf::export::export_gguf_planned;
use tunelab::gguf::imatrix_file::ImatrixData;
use tunelab::gguf::{GgufReader, Value};
use tunelab::model;
use tunelab::quant::plan::{Importance, QuantPlan, Target};

#[path = "support/smollm2.rs"]
mod support;
use support::smollm2;
#[path = "support/cli.rs"]
mod cli;
use cli::refused;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Metadata entry `k` = `v` as the fixture writes it: [key, GGUF value type, value].
fn json_of(k: &str, v: &Value) -> serde_json::Value {
    let (ty, v) = match v {
        Value::String(s) => ("STRING", serde_json::Value::from(s.as_str())),
        Value::U32(n) => ("UINT32", serde_json::Value::from(*n)),
        Value::I32(n) => ("INT32", serde_json::Value::from(*n)),
        other => ("OTHER", serde_json::Value::from(format!("{other:?}"))),
    };
    serde_json::json!([k, ty, v])
}

/// Export SmolLM2 in each of `presets` with the fixture's matrix (named `imatrix.gguf`, as
/// llama-quantize was given it) and compare every tensor and the imatrix keys with the fixture;
/// prints per preset how many tensors and bytes agree, then fails naming every difference.
fn check(presets: &[&str]) {
    let Some(path) = smollm2() else { return };
    let m = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("quant/smollm2_imatrix_presets.json")).unwrap(),
    )
    .unwrap();
    let data = ImatrixData::load(fixture("quant/smollm2.imatrix.gguf")).unwrap();
    let importance = Arc::new(Importance::from_imatrix(&data, "imatrix.gguf").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for preset in presets {
        let tensors = expected["presets"][preset].as_object().unwrap();
        let mut plan = QuantPlan::new(Target::named(preset).unwrap());
        plan.importance = Some(importance.clone());
        let out = dir.path().join(format!("{preset}.gguf"));
        export_gguf_planned(&m, None, &out, &plan, &mut |_| {}).unwrap();
        let r = GgufReader::open(&out).unwrap();
        let keys: Vec<serde_json::Value> = r
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("quantize.imatrix."))
            .map(|(k, v)| json_of(k, v))
            .collect();
        if serde_json::Value::from(keys.clone()) != expected["imatrix_keys"] {
            wrong.push(format!(
                "{preset}: imatrix keys {} (llama-quantize: {})",
                serde_json::Value::from(keys),
                expected["imatrix_keys"]
            ));
        }
        assert_eq!(r.tensors.len(), tensors.len(), "{preset}");
        let (mut same, mut same_bytes, mut all_bytes) = (0, 0u64, 0u64);
        for t in &r.tensors {
            let want = &tensors[&t.name];
            let bytes = r.tensor_bytes(t).unwrap();
            all_bytes += bytes.len() as u64;
            if t.ggml_type.name != want[0] {
                wrong.push(format!(
                    "{preset} {}: type {} (llama-quantize: {})",
                    t.name, t.ggml_type.name, want[0]
                ));
            } else if fnv(&bytes) != want[1].as_str().unwrap() {
                wrong.push(format!(
                    "{preset} {} ({}): bytes differ from llama-quantize's",
                    t.name, t.ggml_type.name
                ));
            } else {
                same += 1;
                same_bytes += bytes.len() as u64;
            }
        }
        println!(
            "{preset:7} {same}/{} tensors, {same_bytes}/{all_bytes} bytes as llama-quantize --imatrix's",
            r.tensors.len()
        );
        std::fs::remove_file(&out).unwrap();
    }
    assert!(
        wrong.is_empty(),
        "{} differences:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The presets make_smollm2_imatrix_expected.sh records.
const PRESETS: &[&str] = &[
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K",
];

#[test]
fn smollm2_with_imatrix_equals_llama_quantize_tensor_for_tensor() {
    check(PRESETS);
}

#[test]
fn the_fixture_covers_every_preset_tested() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("quant/smollm2_imatrix_presets.json")).unwrap(),
    )
    .unwrap();
    let mut have: Vec<&str> = expected["presets"]
        .as_object()
        .unwrap()
        .keys()
        .map(|s| s.as_str())
        .collect();
    have.sort();
    let mut want = PRESETS.to_vec();
    want.sort();
    assert_eq!(have, want);
}

/// `tunelab quantize` with its arguments, run in `dir`: (exit status, stdout, stderr).
fn tunelab_quantize(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["quantize"];
    all.extend_from_slice(args);
    cli::tunelab_in(dir, &all)
}

/// `tunelab quantize IN OUT Q4_0 --imatrix tiny.imatrix.gguf` (llama-imatrix's matrix of the
/// `tiny` model) writes the tensors an export with that matrix writes, which differ from those
/// without it, and the keys llama-quantize records, naming the matrix as given.
#[test]
fn the_quantize_command_takes_an_importance_matrix() {
    let tiny = model::load("tiny", &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f32 = dir.path().join("tiny.gguf");
    export_gguf_planned(
        &tiny,
        None,
        &f32,
        &QuantPlan::new(Target::named("F32").unwrap()),
        &mut |_| {},
    )
    .unwrap();
    let imatrix_dir = fixture("imatrix");
    let out = dir.path().join("q4_0.gguf");
    let (code, stdout, err) = tunelab_quantize(
        &imatrix_dir,
        &[
            f32.to_str().unwrap(),
            out.to_str().unwrap(),
            "Q4_0",
            "--imatrix",
            "tiny.imatrix.gguf",
        ],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    let r = GgufReader::open(&out).unwrap();
    let key = |k: &str| r.get(k).cloned();
    assert_eq!(
        key("quantize.imatrix.file"),
        Some(Value::String("tiny.imatrix.gguf".into()))
    );
    assert_eq!(
        key("quantize.imatrix.dataset"),
        Some(Value::String("calibration.txt".into()))
    );
    assert_eq!(key("quantize.imatrix.entries_count"), Some(Value::U32(28)));
    assert_eq!(key("quantize.imatrix.chunks_count"), Some(Value::U32(4)));
    // llama-quantize writes the counts as UINT32 (llama.cpp PR 14182).
    // The library's export with the same matrix writes the same tensors; without it, others.
    let data = ImatrixData::load(imatrix_dir.join("tiny.imatrix.gguf")).unwrap();
    let mut plan = QuantPlan::new(Target::named("Q4_0").unwrap());
    plan.importance = Some(Arc::new(
        Importance::from_imatrix(&data, "tiny.imatrix.gguf").unwrap(),
    ));
    let with = dir.path().join("with.gguf");
    export_gguf_planned(&tiny, None, &with, &plan, &mut |_| {}).unwrap();
    plan.importance = None;
    let without = dir.path().join("without.gguf");
    export_gguf_planned(&tiny, None, &without, &plan, &mut |_| {}).unwrap();
    let (w, wo) = (
        GgufReader::open(&with).unwrap(),
        GgufReader::open(&without).unwrap(),
    );
    let mut changed = 0;
    for t in &r.tensors {
        let bytes = r.tensor_bytes(t).unwrap();
        let tw = w.tensor(&t.name).unwrap();
        assert_eq!(t.ggml_type.name, tw.ggml_type.name, "{}", t.name);
        assert!(bytes == w.tensor_bytes(tw).unwrap(), "{}", t.name);
        changed += (bytes != wo.tensor_bytes(wo.tensor(&t.name).unwrap()).unwrap()) as usize;
    }
    assert!(changed > 0, "the matrix changed no tensor");
    assert!(wo.get("quantize.imatrix.file").is_none());

    // A missing or garbled matrix, and Q2_K_S without one: one line, a failing status.
    let (i, o) = (f32.to_str().unwrap(), out.to_str().unwrap());
    refused(
        tunelab_quantize(dir.path(), &[i, o, "Q4_0", "--imatrix", "absent.gguf"]),
        "absent.gguf",
    );
    std::fs::write(dir.path().join("garbled.gguf"), b"GGUF\x03\0\0\0garbled").unwrap();
    refused(
        tunelab_quantize(dir.path(), &[i, o, "Q4_0", "--imatrix", "garbled.gguf"]),
        "garbled.gguf",
    );
    std::fs::write(
        dir.path().join("text.gguf"),
        "not a matrix at all\n".repeat(10),
    )
    .unwrap();
    refused(
        tunelab_quantize(dir.path(), &[i, o, "Q4_0", "--imatrix", "text.gguf"]),
        "text.gguf",
    );
    refused(
        tunelab_quantize(dir.path(), &[i, o, "Q2_K_S"]),
        "Q2_K_S needs an importance matrix",
    );
    // An input that is itself a model, not a matrix.
    refused(
        tunelab_quantize(dir.path(), &[i, o, "Q4_0", "--imatrix", i]),
        "tiny.gguf",
    );
}
