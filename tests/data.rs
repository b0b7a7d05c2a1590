//! The data layer against real files: LLaMA-Factory's own demo datasets through their own
//! registry, the same records in every supported format (written by pandas, pyarrow and Hugging
//! Face `datasets`), and a malformed fixture for every bad-data case.

use std::path::{Path, PathBuf};

#[path = "support/skip.rs"]
mod skip;

use tunelab::cancel::CancelToken;
use tunelab::data::{load, Dataset, LoadOptions, OnError, Role};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// LLaMA-Factory's demo data (beside the project as `../shared/llamafactory-data`, or where
/// `TUNELAB_LF_DATA` points). Required under CI; elsewhere its tests are skipped with a note.
fn lf_data() -> Option<PathBuf> {
    let dir = std::env::var_os("TUNELAB_LF_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/llamafactory-data"));
    if dir.join("dataset_info.json").is_file() {
        skip::ran();
        return Some(dir);
    }
    skip::skip(
        "LLaMA-Factory's demo data",
        "put it at ../shared/llamafactory-data or set TUNELAB_LF_DATA",
    );
    None
}

fn opts(dir: &Path) -> LoadOptions {
    LoadOptions {
        dir: dir.to_path_buf(),
        ..Default::default()
    }
}

fn load_in(dir: &Path, name: &str) -> tunelab::Result<Dataset> {
    load(name, &opts(dir), &CancelToken::new())
}

#[test]
fn llamafactory_demo_datasets_load_through_their_own_registry() {
    let Some(dir) = lf_data() else { return };
    for (name, count) in [
        ("alpaca_zh_demo", 1000),
        ("alpaca_en_demo", 999),
        ("identity", 91),
    ] {
        let ds = load_in(&dir, name).unwrap();
        assert_eq!(ds.len(), count, "{name}");
        assert_eq!(ds.skipped().total, 0, "{name}");
    }
    let glaive = load_in(&dir, "glaive_toolcall_zh_demo").unwrap();
    assert_eq!(glaive.len(), 300);
    let mut roles = std::collections::BTreeMap::new();
    for e in glaive.iter() {
        for m in &e.messages {
            *roles.entry(m.role).or_insert(0) += 1;
        }
    }
    // Counts from LLaMA-Factory's file (specs/llamafactory.md §11).
    assert_eq!(roles[&Role::Assistant], 724);
    assert_eq!(roles[&Role::User], 722);
    assert_eq!(roles[&Role::Function], 216);
    assert_eq!(roles[&Role::Observation], 218);
    let empty_tools = glaive.iter().filter(|e| e.tools == "[]").count();
    assert_eq!(empty_tools, 100);
    assert!(glaive.get(0).unwrap().tools.contains("generate_invoice"));

    // Alpaca conversion: instruction + "\n" + input.
    let en = load_in(&dir, "alpaca_en_demo").unwrap();
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("alpaca_en_demo.json")).unwrap())
            .unwrap();
    let with_input = raw
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r["input"] != "")
        .unwrap();
    let r = &raw[with_input];
    assert_eq!(
        en.get(with_input).unwrap().messages[0].content,
        format!(
            "{}\n{}",
            r["instruction"].as_str().unwrap(),
            r["input"].as_str().unwrap()
        )
    );
}

#[test]
fn a_copied_registry_entry_loads_from_another_folder() {
    let Some(lf) = lf_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        lf.join("alpaca_zh_demo.json"),
        dir.path().join("alpaca_zh_demo.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dataset_info.json"),
        r#"{"alpaca_zh_demo": {"file_name": "alpaca_zh_demo.json"}}"#,
    )
    .unwrap();
    assert_eq!(load_in(dir.path(), "alpaca_zh_demo").unwrap().len(), 1000);
}

#[test]
fn every_format_gives_identical_examples() {
    let dir = root().join("tests/fixtures/formats");
    let reference: Vec<_> = load_in(&dir, "alpaca_json")
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(reference.len(), 6);
    assert_eq!(reference[2].messages[1].content, "1. apple\n2. pear");
    assert_eq!(
        reference[1].messages[0].content,
        "Summarise, briefly\nTom said \"yes\", then left."
    );
    for name in [
        "alpaca_jsonl",
        "alpaca_csv",
        "alpaca_tsv",
        "alpaca_parquet",
        "alpaca_saved",
    ] {
        let got: Vec<_> = load_in(&dir, name).unwrap().iter().cloned().collect();
        assert_eq!(got, reference, "{name} differs from alpaca.json");
    }
    let reference: Vec<_> = load_in(&dir, "sharegpt_json")
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(reference[0].system, "Be brief.");
    assert_eq!(reference[1].messages[1].role, Role::Function);
    for name in ["sharegpt_parquet", "sharegpt_saved"] {
        let got: Vec<_> = load_in(&dir, name).unwrap().iter().cloned().collect();
        assert_eq!(got, reference, "{name} differs from sharegpt.json");
    }
}

#[test]
fn saved_datasets_reload_identically_in_both_forms() {
    let Some(lf) = lf_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (name, file) in [
        ("glaive_toolcall_zh_demo", "g.jsonl"),
        ("alpaca_en_demo", "a.json"),
    ] {
        let ds = load_in(&lf, name).unwrap();
        let path = dir.path().join(file);
        tunelab::data::save::save(&ds, &path, tunelab::data::save::SaveForm::Auto).unwrap();
        let back = load(
            path.to_str().unwrap(),
            &opts(dir.path()),
            &CancelToken::new(),
        )
        .unwrap();
        assert!(
            ds.iter().eq(back.iter()),
            "{name} changed in a save/load round trip"
        );
    }
}

// ---- malformed data: one fixture per case -------------------------------------------------------

fn malformed() -> PathBuf {
    root().join("tests/fixtures/malformed")
}

fn error_of(name: &str) -> String {
    load_in(&malformed(), name).unwrap_err().to_string()
}

#[test]
fn a_broken_json_line_fails_with_its_line_number() {
    let e = error_of("broken_line");
    assert!(e.contains("broken_line.jsonl: line 3 column"), "{e}");
}

#[test]
fn wrong_role_order_skips_and_names_the_records() {
    let ds = load_in(&malformed(), "wrong_roles").unwrap();
    assert_eq!((ds.len(), ds.skipped().total), (5, 3));
    assert_eq!(
        ds.skipped().first,
        [2, 5, 6].map(|i| format!(
            "record {}: role \"gpt\" at position 0, expected a user turn",
            i + 1
        ))
    );
    let mut fail = opts(&malformed());
    fail.on_error = OnError::Fail;
    let e = load("wrong_roles", &fail, &CancelToken::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("wrong_roles.json: record 3: role \"gpt\" at position 0, expected a user turn"),
        "{e}"
    );
}

#[test]
fn a_missing_mapped_column_is_a_skip_not_a_crash() {
    let ds = load_in(&malformed(), "missing_output").unwrap();
    assert_eq!((ds.len(), ds.skipped().total), (2, 2));
    assert!(
        ds.skipped().first[0].starts_with("record 2: field \"output\": missing from the record")
    );
    assert_eq!(
        ds.skipped().first[1],
        "record 3: field \"output\": expected string, got null"
    );
}

#[test]
fn spreadsheet_csv_with_multiline_answers_loads_with_a_columns_mapping() {
    let ds = load_in(&malformed(), "renamed_columns").unwrap();
    assert_eq!(ds.len(), 2);
    let first = ds.get(0).unwrap();
    assert_eq!(first.messages[0].content, "How do I reset, quickly?");
    assert_eq!(
        first.messages[1].content,
        "Hold the button.\r\nThen wait \"ten\" seconds."
    );
}

#[test]
fn bad_files_are_one_line_errors_naming_the_place() {
    let e = error_of("not_utf8");
    assert!(e.contains("latin1.jsonl: line 2: not valid UTF-8"), "{e}");
    let e = error_of("empty");
    assert!(e.contains("empty.json: line 1: the file is empty"), "{e}");
    let e = error_of("nothing_valid");
    assert!(
        e.contains("no valid record (2 skipped; first: record 1: field \"instruction\": missing"),
        "{e}"
    );
    assert!(
        e.contains("expected alpaca records like {\"instruction\""),
        "{e}"
    );
    let e = error_of("mixed_folder");
    assert!(e.contains("file types should be identical"), "{e}");
    let e = error_of("hub_only");
    assert!(
        e.contains("download the data into") && e.contains("\"file_name\""),
        "{e}"
    );
    let e = error_of("bad_field_count");
    assert!(
        e.contains("bad_field_count.csv: line 3: expected 3 fields (as in the header), got 4"),
        "{e}"
    );
    let e = error_of("no_such_name");
    assert!(
        e.contains("unknown dataset \"no_such_name\"") && e.contains("registered: "),
        "{e}"
    );
    for e in [
        error_of("not_utf8"),
        error_of("empty"),
        error_of("mixed_folder"),
    ] {
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn a_huge_line_is_refused_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.jsonl");
    let mut body = String::from(
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n{\"instruction\": \"",
    );
    body.push_str(&"x".repeat(tunelab::data::readers::MAX_LINE_BYTES + 10));
    body.push_str("\"}\n");
    std::fs::write(&path, body).unwrap();
    let e = load(
        path.to_str().unwrap(),
        &opts(dir.path()),
        &CancelToken::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("huge.jsonl: line 2: line longer than"), "{e}");
}

#[test]
fn shipped_data_is_registered_and_valid() {
    let dir = root().join("data");
    for (name, at_least) in [
        ("instruct_zh", 60),
        ("instruct_en", 60),
        ("identity", 30),
        ("chat_sharegpt", 20),
    ] {
        let ds = load_in(&dir, name).unwrap();
        assert!(ds.len() >= at_least, "{name}: {}", ds.len());
        assert_eq!(ds.skipped().total, 0, "{name}: {:?}", ds.skipped().first);
    }
    let chat = load_in(&dir, "chat_sharegpt").unwrap();
    assert!(chat
        .iter()
        .all(|e| !e.system.is_empty() && e.messages.len() >= 4));
    let identity = load_in(&dir, "identity").unwrap();
    assert!(identity
        .iter()
        .any(|e| e.messages[1].content.contains("{{name}}")));
    let filled = identity.fill(&[
        ("name".into(), "Lab".into()),
        ("author".into(), "Ada".into()),
    ]);
    assert!(filled.iter().all(|e| !e.messages[1].content.contains("{{")));
}

#[test]
fn a_folder_as_file_name_loads_every_file_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    std::fs::write(
        parts.join("a.jsonl"),
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"1\"}\n",
    )
    .unwrap();
    std::fs::write(parts.join("b.jsonl"), "{\"instruction\": \"b\", \"input\": \"\", \"output\": \"2\"}\n{\"instruction\": \"c\", \"input\": \"\", \"output\": \"3\"}\n").unwrap();
    std::fs::write(parts.join(".hidden.jsonl"), "not json").unwrap();
    std::fs::write(
        dir.path().join("dataset_info.json"),
        r#"{"parts": {"file_name": "parts"}}"#,
    )
    .unwrap();
    let ds = load_in(dir.path(), "parts").unwrap();
    let outputs: Vec<&str> = ds.iter().map(|e| e.messages[1].content.as_str()).collect();
    assert_eq!(
        outputs,
        ["1", "2", "3"],
        "files in name order, hidden files ignored"
    );
}
