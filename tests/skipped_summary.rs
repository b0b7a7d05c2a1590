//! The last line of `cargo test`: how many tests were skipped, why, and the command that enables
//! them. Test binaries cannot print once all of them are done, so this small one (no libtest
//! harness; its target is named `zz_skipped_summary` because cargo runs test binaries in name
//! order) reads the notes the skipping tests left (see `support/skip.rs`) and clears them.

#[path = "support/skip.rs"]
mod skip;

fn main() {
    if let Some(line) = skip::summarize_and_clear(&skip::skip_notes_dir()) {
        println!("\n{line}");
    }
}
