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
