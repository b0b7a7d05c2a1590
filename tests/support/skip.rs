//! Skipping a test whose input is absent, so that the run still says so at its end.
//!
//! A test that needs the real model or LLaMA-Factory's demo data skips when they are absent (and
//! fails under CI, where they are required). libtest swallows what a passing test prints, so
//! each skip also leaves a note in the target folder; `tests/skipped_summary.rs`, which cargo runs
//! after every other test binary, counts the notes into one line with the command that enables
//! the skipped tests, then clears them. A test that runs removes its own note, so a note left by
//! an earlier run never outlives the next one.

// Each test binary uses part of this file.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the notes live: one file per skipped test, holding the reason and the remedy.
pub fn skip_notes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests")
}

/// The running test's name (libtest names each test's thread after it).
fn note_path() -> PathBuf {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", "__");
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let binary = binary.split('-').next().unwrap_or("").to_string();
    skip_notes_dir().join(format!("{binary}__{name}"))
}

/// Skip the running test: fails under CI (where `what` is required), else prints why and leaves
/// a note. `remedy` is the command or setting that makes the test run.
pub fn skip(what: &str, remedy: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} (required under CI): {remedy}"
    );
    eprintln!("skipped: {what} ({remedy})");
    let path = note_path();
    let _ = std::fs::create_dir_all(skip_notes_dir());
    let _ = std::fs::write(path, format!("{what}\t{remedy}\n"));
}

/// The running test has what it needs: clear a note an earlier run left for it.
pub fn ran() {
    let _ = std::fs::remove_file(note_path());
}

/// The closing line for the notes in `dir` (`None` when there are none); the notes are removed.
pub fn summarize_and_clear(dir: &Path) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    // remedy → (what, tests)
    let mut by_remedy: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let (what, remedy) = text.trim_end().split_once('\t').unwrap_or((&text, ""));
        let slot = by_remedy
            .entry(remedy.to_string())
            .or_insert_with(|| (what.to_string(), 0));
        slot.1 += 1;
        let _ = std::fs::remove_file(entry.path());
    }
    let total: usize = by_remedy.values().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let parts: Vec<String> = by_remedy
        .iter()
        .map(|(remedy, (what, n))| format!("{n} need {what}: {remedy}"))
        .collect();
    Some(format!(
        "skipped {total} test(s) that need what this machine lacks ({}); they pass as \"ok\" above",
        parts.join("; ")
    ))
}
