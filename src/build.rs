//! Build script: records the exact versions of the crates tunelab is built on.
//!
//! `version()` in scripts and `tunelab --version` report the candle and rhai versions that were
//! really compiled in; they are read from `Cargo.lock` here, so they can never drift from it.

use std::path::Path;

/// Crates whose versions are reported, and the env var each one is exported as.
const REPORTED: &[(&str, &str)] = &[
    ("candle-core", "TUNELAB_DEP_CANDLE_CORE"),
    ("candle-nn", "TUNELAB_DEP_CANDLE_NN"),
    ("candle-transformers", "TUNELAB_DEP_CANDLE_TRANSFORMERS"),
    ("rhai", "TUNELAB_DEP_RHAI"),
];

fn main() {
    let lock_path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    for (krate, var) in REPORTED {
        let version = locked_version(&lock, krate).unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env={var}={version}");
    }
}

/// The `version = "..."` line that follows `name = "<krate>"` in a Cargo.lock.
fn locked_version(lock: &str, krate: &str) -> Option<String> {
    let name_line = format!("name = \"{krate}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == name_line {
            let next = lines.next()?.trim();
            return next
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}
