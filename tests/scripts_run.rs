//! Every script in `scripts/` runs to the end with exit code 0 (each one throws when a result it
//! checks is wrong), so the tutorials can never silently rot.

use std::path::Path;
use std::process::Command;

#[test]
fn every_script_in_scripts_runs_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts: Vec<_> = std::fs::read_dir(root.join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    scripts.sort();
    assert!(
        scripts.len() >= 2,
        "expected the quickstart and the tutorials"
    );
    let mut failures = Vec::new();
    for script in &scripts {
        let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .arg("run")
            .arg(script)
            .current_dir(root)
            .output()
            .unwrap();
        let status = if out.status.success() { "ok" } else { "FAILED" };
        println!("{status} {}", script.display());
        if !out.status.success() {
            failures.push(format!(
                "{}: exit {:?}\n{}",
                script.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The benchmark scripts need big inputs; run each on a small fixture so they cannot rot.
#[test]
fn benchmark_scripts_run_on_small_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args([
            "run",
            "scripts/bench/data_load.rhai",
            "--",
            "path=tests/fixtures/formats/alpaca.jsonl",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(line["records"], 6);
    assert!(line["records_per_s"].as_i64().unwrap() > 0);
    assert!(line["peak_rss_mb"].as_f64().unwrap() > 0.0);
}
