//! `tunelab quantize IN OUT --target-size SIZE | --target-bpw BITS`: auto_mix chooses each
//! tensor's type so that the whole file fits, the file is written with exactly those types, and the
//! choice can be saved as a llama-quantize `--tensor-type-file`. `tunelab export --imatrix`
//! quantizes with an importance matrix. Bad arguments are one line each. On the tiny model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tunelab::gguf::{GgufReader, Value};

#[path = "support/cli.rs"]
mod cli;
use cli::{refused, tunelab_in};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every weight of the file (norms included): what bits per weight count over.
fn elements(r: &GgufReader) -> u64 {
    r.tensors.iter().map(|t| t.ne.iter().product::<u64>()).sum()
}

/// The type of each 2-D tensor of the file, by name.
fn types(r: &GgufReader) -> HashMap<String, &'static str> {
    r.tensors
        .iter()
        .filter(|t| t.ne.len() >= 2)
        .map(|t| (t.name.clone(), t.ggml_type.name))
        .collect()
}

/// A budget in bits per weight between the all-Q4_0 file (4.5) and the all-Q8_0 one (8.5), with
/// only those two offered: the file must mix them, stay within the budget, quantize with the
/// matrix, and its saved rules name every tensor's type in the file.
#[test]
fn a_bit_budget_mixes_types_fits_and_saves_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = fixture("imatrix/tiny.imatrix.gguf");
    let (code, out, err) = tunelab_in(
        dir.path(),
        &[
            "quantize",
            "tiny",
            "mixed.gguf",
            "--target-bpw",
            "6.0",
            "--candidates",
            "Q4_0,Q8_0",
            "--imatrix",
            matrix.to_str().unwrap(),
            "--save-rules",
            "rules.txt",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("auto_mix (proxy)"), "{out}");
    assert!(out.contains("wrote mixed.gguf"), "{out}");
    let r = GgufReader::open(dir.path().join("mixed.gguf")).unwrap();
    let budget = (6.0 * elements(&r) as f64 / 8.0).round() as u64;
    assert!(r.file_len <= budget, "{} bytes over {budget}", r.file_len);
    let chosen = types(&r);
    let mut kinds: Vec<&str> = chosen.values().copied().collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds, ["Q4_0", "Q8_0"], "{chosen:?}");
    assert!(matches!(
        r.get("quantize.imatrix.file"),
        Some(Value::String(_))
    ));

    let rules = std::fs::read_to_string(dir.path().join("rules.txt")).unwrap();
    let mut seen = 0;
    for line in rules.lines() {
        let (pattern, ty) = line.split_once('=').unwrap();
        let name = pattern
            .trim_start_matches('^')
            .trim_end_matches('$')
            .replace("\\.", ".");
        assert_eq!(chosen.get(&name).copied(), Some(ty), "{line}");
        seen += 1;
    }
    assert_eq!(seen, chosen.len(), "{rules}");
}

/// A byte budget 10% under the all-Q8_0 file, measured end to end (kld) on calibration text.
#[test]
fn a_size_budget_with_the_kld_measure_fits() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = tunelab_in(
        dir.path(),
        &[
            "export", "--model", "tiny", "--format", "gguf", "--type", "Q8_0", "--out", "q8.gguf",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let q8 = std::fs::metadata(dir.path().join("q8.gguf")).unwrap().len();
    let budget = q8 * 9 / 10;
    let text = fixture("imatrix/calibration.txt");
    let (code, out, err) = tunelab_in(
        dir.path(),
        &[
            "quantize",
            "tiny",
            "kld.gguf",
            "--target-size",
            &budget.to_string(),
            "--measure",
            "kld",
            "--text",
            text.to_str().unwrap(),
            "--ctx",
            "64",
            "--chunks",
            "2",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("auto_mix (kld)"), "{out}");
    let size = std::fs::metadata(dir.path().join("kld.gguf"))
        .unwrap()
        .len();
    assert!(size <= budget && size > budget / 2, "{size} for {budget}");
}

#[test]
fn bad_targets_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let q = |extra: &[&str]| {
        let mut args = vec!["quantize", "tiny", "out.gguf"];
        args.extend_from_slice(extra);
        tunelab_in(d, &args)
    };
    refused(q(&["Q4_0", "--target-bpw", "5"]), "not both");
    refused(q(&[]), "--target-size");
    refused(q(&["--target-bpw", "5", "--measure", "kld"]), "--text");
    refused(q(&["--target-bpw", "5", "--measure", "hessian"]), "hessian");
    refused(q(&["--target-size", "10 parsecs"]), "parsecs");
    refused(q(&["--target-bpw", "0"]), "--target-bpw");
    refused(q(&["--target-size", "1000"]), "fixed part");
    refused(q(&["--target-size", "100000"]), "smallest file");
    refused(q(&["--target-bpw", "5", "--candidates", "Q9_9"]), "Q9_9");
    refused(
        q(&["--target-bpw", "5", "--tensor-type", "attn=Q8_0"]),
        "--tensor-type",
    );
    refused(
        q(&["--target-bpw", "5", "--imatrix", "absent.gguf"]),
        "absent.gguf",
    );
    assert!(!d.join("out.gguf").exists());
}

/// `tunelab export --imatrix`: the matrix reaches the file's keys; Q2_K_S without one is refused.
#[test]
fn export_quantizes_with_an_importance_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = fixture("imatrix/tiny.imatrix.gguf");
    let args = |ty: &'static str, out: &'static str| {
        vec![
            "export", "--model", "tiny", "--format", "gguf", "--type", ty, "--out", out,
        ]
    };
    let mut with = args("Q4_0", "with.gguf");
    with.extend_from_slice(&["--imatrix", matrix.to_str().unwrap()]);
    let (code, out, err) = tunelab_in(dir.path(), &with);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("with an importance matrix"), "{out}");
    let r = GgufReader::open(dir.path().join("with.gguf")).unwrap();
    assert_eq!(r.get("quantize.imatrix.chunks_count"), Some(&Value::U32(4)));
    refused(
        tunelab_in(dir.path(), &args("Q2_K_S", "q2.gguf")),
        "Q2_K_S needs an importance matrix",
    );
}
