//! The last line of `cargo test`: how many tests were skipped, why, and the command that enables
//! them. Test binaries cannot print once all of them are done, so this small one (no libtest
//! harness; its target is named `zz_skipped_summary` because cargo runs test binaries in name
//! order) reads the notes the skipping tests left (see `support/skip.rs`) and clears them.

use std::collections::BTreeMap;

#[path = "support/skip.rs"]
mod skip;

fn main() {
    let dir = skip::skip_notes_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
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
        return;
    }
    let parts: Vec<String> = by_remedy
        .iter()
        .map(|(remedy, (what, n))| format!("{n} need {what}: {remedy}"))
        .collect();
    println!(
        "\nskipped {total} test(s) that need what this machine lacks ({}); they pass as \"ok\" above",
        parts.join("; ")
    );
}
