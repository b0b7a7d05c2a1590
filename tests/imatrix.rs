//! The importance matrix against llama-imatrix: tunelab's collection on the `tiny` model and on
//! SmolLM2 gives llama-imatrix's sums per column within [`REL_TOL`] and its counts exactly
//! (tests/fixtures/imatrix, made by make_imatrix_fixture.sh beside them); llama-imatrix's GGUF
//! and `.dat` files load and save back byte for byte; `--show-statistics` figures agree to the
//! digits it prints; bad files fail with one line naming them; `output.weight` is collected only
//! when asked and untied; the command line and the script API write files that load.

use std::path::{Path, PathBuf};
use std::process::Command;

use tunelab::cancel::CancelToken;
use tunelab::gguf::imatrix_file::{ImatrixData, ImatrixEntry, ImatrixFormat};
use tunelab::gguf::{GgmlType, GgufWriter, Value};
use tunelab::model::{self, Model, ModelParts};
use tunelab::quant::imatrix::{collect_imatrix, ImatrixOptions};
use tunelab::quant::imatrix_stats::imatrix_stats;

#[path = "support/smollm2.rs"]
mod support;
use support::smollm2;

/// Largest relative difference per column between tunelab's sums and llama-imatrix's (both in
/// f32; they differ in summation order and in the kernels' rounding: measured 2.4e-6 on tiny,
/// 2.5e-5 on SmolLM2).
const REL_TOL: f32 = 1e-4;

const BIN: &str = env!("CARGO_BIN_EXE_tunelab");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imatrix")
}

fn calibration() -> String {
    std::fs::read_to_string(fixtures().join("calibration.txt")).unwrap()
}

/// The fixtures' settings: four chunks of 128 tokens.
fn fixture_options() -> ImatrixOptions {
    ImatrixOptions {
        ctx: 128,
        chunks: Some(4),
        process_output: false,
    }
}

fn collect(m: &Model, opts: &ImatrixOptions) -> ImatrixData {
    let mut d =
        collect_imatrix(m, &calibration(), opts, &CancelToken::new(), &mut |_, _| {}).unwrap();
    d.datasets.push("calibration.txt".into());
    d
}

fn tiny() -> Model {
    model::load("tiny", &Default::default()).unwrap()
}

/// Relative difference of two sums (exact zeros agree).
fn rel(a: f32, b: f32) -> f32 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

/// Every column of every tensor of `ours` against `reference`, same names and counts; panics
/// with the worst column.
fn assert_agrees(ours: &ImatrixData, reference: &ImatrixData, what: &str) {
    let names = |d: &ImatrixData| d.entries.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(ours), names(reference), "{what}: tensor names");
    let mut worst = (0f32, String::new());
    for (name, r) in &reference.entries {
        let o = &ours.entries[name];
        assert_eq!(o.counts, r.counts, "{what}: {name}: counts");
        assert_eq!(o.in_sum2.len(), r.in_sum2.len(), "{what}: {name}: columns");
        for (j, (a, b)) in o.in_sum2.iter().zip(&r.in_sum2).enumerate() {
            if rel(*a, *b) > worst.0 {
                worst = (
                    rel(*a, *b),
                    format!("{name}[{j}]: tunelab {a}, llama-imatrix {b}"),
                );
            }
        }
    }
    assert!(
        worst.0 <= REL_TOL,
        "{what}: NOT OK, max relative difference {} at {}",
        worst.0,
        worst.1
    );
    eprintln!(
        "{what}: OK, max relative difference {:.2e} at {}",
        worst.0, worst.1
    );
}

#[test]
fn tiny_collection_agrees_with_llama_imatrix() {
    let ours = collect(&tiny(), &fixture_options());
    let theirs = ImatrixData::load(fixtures().join("tiny.imatrix.gguf")).unwrap();
    assert_agrees(&ours, &theirs, "tiny");
    assert_eq!(
        (ours.chunk_count, ours.chunk_size, &ours.datasets),
        (4, 128, &theirs.datasets)
    );
    assert!(theirs.has_metadata && ours.has_metadata);
    // 4 layers × 7 projections, 512 tokens each.
    assert_eq!(ours.entries.len(), 28);
    assert!(ours.entries.values().all(|e| e.counts == [512.0]));
}

#[test]
fn smollm2_collection_agrees_with_llama_imatrix() {
    let Some(path) = smollm2() else { return };
    let m = model::load(path.to_str().unwrap(), &Default::default()).unwrap();
    let ours = collect(&m, &fixture_options());
    let text = std::fs::read_to_string(fixtures().join("smollm2_imatrix.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let meta = &j["metadata"];
    assert_eq!(meta["imatrix.chunk_count"], ours.chunk_count);
    assert_eq!(meta["imatrix.chunk_size"], ours.chunk_size);
    assert_eq!(meta["imatrix.datasets"][0], "calibration.txt");
    // The fixture keeps 24 columns of each tensor: compare those.
    let mut reference = ImatrixData::default();
    let mut subset = ImatrixData::default();
    for (name, t) in j["tensors"].as_object().unwrap() {
        let cols: Vec<usize> = t["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap() as usize)
            .collect();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let o = ours
            .entries
            .get(name)
            .unwrap_or_else(|| panic!("tunelab collected no {name}"));
        assert_eq!(o.in_sum2.len() as u64, t["n_per_row"].as_u64().unwrap());
        reference.entries.insert(
            name.clone(),
            ImatrixEntry {
                in_sum2: floats(&t["in_sum2"]),
                counts: floats(&t["counts"]),
            },
        );
        subset.entries.insert(
            name.clone(),
            ImatrixEntry {
                in_sum2: cols.iter().map(|&c| o.in_sum2[c]).collect(),
                counts: o.counts.clone(),
            },
        );
    }
    assert_eq!(ours.entries.len(), 210, "30 layers × 7 projections");
    assert_agrees(&subset, &reference, "SmolLM2");
}

#[test]
fn llama_imatrix_files_load_and_save_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["tiny.imatrix.gguf", "tiny.imatrix.dat"] {
        let original = std::fs::read(fixtures().join(file)).unwrap();
        let d = ImatrixData::load(fixtures().join(file)).unwrap();
        assert_eq!(d.datasets, ["calibration.txt"], "{file}");
        assert_eq!(d.chunk_count, 4, "{file}");
        let copy = dir.path().join(file);
        d.save(&copy).unwrap();
        assert!(
            std::fs::read(&copy).unwrap() == original,
            "{file}: saved again, the bytes differ"
        );
    }
    // The two formats give llama-quantize the same weights.
    let gguf = ImatrixData::load(fixtures().join("tiny.imatrix.gguf")).unwrap();
    let dat = ImatrixData::load(fixtures().join("tiny.imatrix.dat")).unwrap();
    assert_eq!(
        (gguf.format, dat.format),
        (ImatrixFormat::Gguf, ImatrixFormat::Legacy)
    );
    for name in gguf.entries.keys() {
        let (a, b) = (
            gguf.importance(name).unwrap(),
            dat.importance(name).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!(rel(*x, *y) <= 1e-6, "{name}: {x} vs {y}");
        }
        // in_sum2 / count, the mean square of the column.
        let e = &gguf.entries[name];
        assert_eq!(a[0], e.in_sum2[0] / e.counts[0]);
    }
    // What llama-quantize writes into the quantized model.
    let keys = gguf.quantize_keys("imatrix.gguf").unwrap();
    assert_eq!(keys.dataset.as_deref(), Some("calibration.txt"));
    assert_eq!((keys.entries_count, keys.chunks_count), (28, Some(4)));
}

#[test]
fn collected_data_round_trips_through_both_formats() {
    let ours = collect(&tiny(), &fixture_options());
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    ours.save(&gguf).unwrap();
    assert_eq!(ImatrixData::load(&gguf).unwrap(), ours);
    // tunelab's GGUF is laid out as llama-imatrix's: same size as its file of the same model.
    let theirs = std::fs::metadata(fixtures().join("tiny.imatrix.gguf")).unwrap();
    assert_eq!(std::fs::metadata(&gguf).unwrap().len(), theirs.len());
    let dat = dir.path().join("m.dat");
    ours.save(&dat).unwrap();
    let back = ImatrixData::load(&dat).unwrap();
    assert_eq!(back.chunk_count, 4);
    assert_eq!(back.datasets, ours.datasets);
    for name in ours.entries.keys() {
        let (a, b) = (
            ours.importance(name).unwrap(),
            back.importance(name).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!(rel(*x, *y) <= 1e-6, "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn statistics_agree_with_show_statistics_to_its_printed_digits() {
    let d = ImatrixData::load(fixtures().join("tiny.imatrix.gguf")).unwrap();
    let ours = imatrix_stats(&d);
    let text = std::fs::read_to_string(fixtures().join("tiny_stats.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(ours.len(), rows.len());
    for (o, r) in ours.iter().zip(rows) {
        let at = format!("{} (llama.cpp row {r})", o.tensor);
        assert_eq!(
            o.layer,
            r["layer"].as_u64().map(|l| l as usize),
            "{at}: order"
        );
        assert_eq!(o.short_name, r["name"].as_str().unwrap(), "{at}: order");
        assert_eq!(o.elements as u64, r["elements"].as_u64().unwrap(), "{at}");
        // Each figure as printed: %.2f, %.4f, or a percentage with 2 decimals.
        let close = |ours: f32, key: &str, decimals: i32, scale: f32| {
            let printed = r[key].as_f64().unwrap() as f32;
            let half_ulp = 0.5 * 10f32.powi(-decimals) + 1e-6;
            assert!(
                (ours * scale - printed).abs() <= half_ulp,
                "{at}: {key}: tunelab {}, llama.cpp printed {printed}",
                ours * scale
            );
        };
        close(o.energy, "energy", 2, 1.0);
        close(o.min, "min", 4, 1.0);
        close(o.max, "max", 4, 1.0);
        close(o.mean, "mean", 2, 1.0);
        close(o.std, "std", 2, 1.0);
        close(o.active, "active_percent", 2, 100.0);
        close(o.entropy, "entropy", 4, 1.0);
        close(o.entropy_norm, "entropy_norm", 2, 1.0);
        close(o.zd, "zd_percent", 2, 100.0);
        close(o.cossim, "cossim", 4, 1.0);
        assert!((o.max_share - o.max / o.energy).abs() < 1e-7, "{at}");
    }
}

#[test]
fn the_output_projection_is_collected_only_when_asked_and_untied() {
    let tied = tiny();
    let opts = ImatrixOptions {
        process_output: true,
        ..fixture_options()
    };
    // Tied: llama.cpp multiplies by token_embd.weight there, which no rule collects.
    assert!(!collect(&tied, &opts).entries.contains_key("output.weight"));
    let mut llama = tied.llama.clone();
    llama.config.tie_word_embeddings = false;
    llama.lm_head = tunelab::model::linear::Linear::dense(tied.llama.embed.clone(), None);
    let untied = Model::new(ModelParts {
        llama,
        ..(*tied).clone()
    });
    let with = collect(&untied, &opts);
    let out = &with.entries["output.weight"];
    assert_eq!(
        (out.counts.as_slice(), out.in_sum2.len()),
        (&[512.0][..], 128)
    );
    // Its input is the final norm's output: every column saw something.
    assert!(out.in_sum2.iter().all(|&v| v > 0.0));
    let without = collect(&untied, &fixture_options());
    assert!(!without.entries.contains_key("output.weight"));
    assert_eq!(without.entries.len() + 1, with.entries.len());
}

/// The one-line error of loading `bytes` written as `name`; it must name the file.
fn load_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let Err(err) = ImatrixData::load(&path) else {
        panic!("{name} loaded")
    };
    let err = err.to_string();
    assert!(!err.contains('\n'), "{name}: not one line: {err}");
    assert!(
        err.contains(&path.display().to_string()),
        "{name}: does not name the file: {err}"
    );
    err
}

#[test]
fn truncated_and_garbled_files_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = std::fs::read(fixtures().join("tiny.imatrix.gguf")).unwrap();
    let dat = std::fs::read(fixtures().join("tiny.imatrix.dat")).unwrap();
    // The last 28 bytes pad the last tensor (4 bytes) to the alignment; cut into its data.
    for cut in [2, 10, 100, gguf.len() / 2, gguf.len() - 29] {
        let err = load_error(dir.path(), "cut.gguf", &gguf[..cut]);
        assert!(err.contains("truncated"), "GGUF cut at {cut}: {err}");
    }
    for cut in [0, 2, 9, 100, dat.len() / 2, dat.len() - 3] {
        let err = load_error(dir.path(), "cut.dat", &dat[..cut]);
        assert!(
            err.contains("truncated") || err.contains("no data"),
            ".dat cut at {cut}: {err}"
        );
    }
    // A legacy header claiming two billion entries, and a name length of -5.
    let mut huge = i32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&dat[4..]);
    let err = load_error(dir.path(), "huge.dat", &huge);
    assert!(err.contains("entry count 2147483647"), "{err}");
    let mut negative = dat.clone();
    negative[4..8].copy_from_slice(&(-5i32).to_le_bytes());
    let err = load_error(dir.path(), "negative.dat", &negative);
    assert!(err.contains("name length -5"), "{err}");
    // Text, and a model GGUF (not an imatrix).
    let err = load_error(dir.path(), "notes.txt", calibration().as_bytes());
    assert!(err.contains("not an importance matrix"), "{err}");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    let f32_type = GgmlType::from_name("F32").unwrap();
    w.add_tensor("token_embd.weight", &[4, 2], f32_type, vec![0; 32])
        .unwrap();
    let err = load_error(dir.path(), "model.gguf", &w.to_bytes().unwrap());
    assert!(
        err.contains("not an importance matrix but a llama model"),
        "{err}"
    );
}

#[test]
fn names_that_do_not_pair_or_match_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let f32_type = GgmlType::from_name("F32").unwrap();
    let floats = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // Sums without their counts.
    let mut w = GgufWriter::new();
    w.set("general.type", Value::String("imatrix".into()));
    w.add_tensor(
        "blk.0.attn_q.weight.in_sum2",
        &[4],
        f32_type,
        floats(&[1.0; 4]),
    )
    .unwrap();
    let path = dir.path().join("half.gguf");
    w.write(&path).unwrap();
    let err = ImatrixData::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string())
            && err.contains("\"blk.0.attn_q.weight\"")
            && err.contains("mismatched sums and counts"),
        "{err}"
    );
    // Counts that do not divide the sums.
    w.add_tensor(
        "blk.0.attn_q.weight.counts",
        &[3],
        f32_type,
        floats(&[1.0; 3]),
    )
    .unwrap();
    w.write(&path).unwrap();
    let err = ImatrixData::load(&path).unwrap_err().to_string();
    assert!(err.contains("do not split into 3 matrices"), "{err}");
    // A matrix without the imatrix.* keys loads, but llama-quantize would refuse it.
    let mut w = GgufWriter::new();
    w.add_tensor(
        "blk.0.attn_q.weight.in_sum2",
        &[4],
        f32_type,
        floats(&[2.0; 4]),
    )
    .unwrap();
    w.add_tensor("blk.0.attn_q.weight.counts", &[1], f32_type, floats(&[2.0]))
        .unwrap();
    w.write(&path).unwrap();
    let d = ImatrixData::load(&path).unwrap();
    assert!(!d.has_metadata);
    assert_eq!(d.importance("blk.0.attn_q.weight").unwrap(), [1.0; 4]);
    assert!(d.quantize_keys("half.gguf").is_err());
    // Names the matrix does not hold: None, for the quantizer to go without.
    let tiny_matrix = ImatrixData::load(fixtures().join("tiny.imatrix.gguf")).unwrap();
    assert!(tiny_matrix.importance("blk.29.ffn_down.weight").is_none());
    assert!(tiny_matrix.importance("token_embd.weight").is_none());
}

#[test]
fn command_line_and_script_write_matrices_that_load() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.imatrix.gguf");
    let text = fixtures().join("calibration.txt");
    let run = Command::new(BIN)
        .args(["imatrix", "-m", "tiny", "-f"])
        .arg(&text)
        .arg("-o")
        .arg(&out)
        .args(["--ctx", "128", "--chunks", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains(&format!("wrote {} (28 tensors, 4 chunks)", out.display())),
        "{stdout}"
    );
    let written = ImatrixData::load(&out).unwrap();
    assert_eq!(written.datasets, [text.display().to_string()]);
    let theirs = ImatrixData::load(fixtures().join("tiny.imatrix.gguf")).unwrap();
    assert_agrees(&written, &theirs, "tunelab imatrix");
    // A missing text: exit 2, one line naming it.
    let run = Command::new(BIN)
        .args(["imatrix", "-m", "tiny", "-f", "no-such.txt", "-o"])
        .arg(dir.path().join("x.gguf"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no-such.txt") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    // The script API: collect, save as .dat, read back, statistics; a dataset's chats as text.
    let dat = dir.path().join("s.dat");
    let script = format!(
        r#"let m = load_model("tiny");
let im = imatrix(m, {text:?}, #{{ ctx: 128, chunks: 4 }});
if im.len() != 28 {{ throw `tensors: ${{im.len()}}`; }}
im.save({dat:?});
let back = load_imatrix({dat:?});
let s = back.stats();
if s.len() != 28 || s[0].elements != 128 {{ throw `stats: ${{s[0]}}`; }}
let w = back.importance("blk.0.ffn_down.weight");
if w.len() != 384 {{ throw `importance: ${{w.len()}}`; }}
if back.importance("output.weight") != () {{ throw "output.weight"; }}
let chats = imatrix(m, dataset("identity").take(40), #{{ ctx: 64, template: "chatml" }});
if chats.len() != 28 || !chats.to_string().contains("[\"identity\"]") {{ throw `${{chats}}`; }}
print("script ok");
"#,
        text = text.display().to_string(),
        dat = dat.display().to_string()
    );
    let mut child = Command::new(BIN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let run = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains("script ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let back = ImatrixData::load(&dat).unwrap();
    assert_eq!(back.format, ImatrixFormat::Legacy);
}
