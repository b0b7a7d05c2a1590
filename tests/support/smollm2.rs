//! Where the tests find SmolLM2 (shared by the model test files through `include!`).

use std::path::PathBuf;

#[path = "skip.rs"]
mod skip;

/// The SmolLM2 GGUF fetched by scripts/fetch-smollm2.sh; required under CI, else its absence
/// skips the test with a note (see `skip.rs`).
pub fn smollm2() -> Option<PathBuf> {
    let cache = std::env::var_os("TUNELAB_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("tunelab")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tunelab")))?;
    let path = cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        skip::ran();
        return Some(path);
    }
    skip::skip(
        &format!("SmolLM2 (not at {})", path.display()),
        "run scripts/fetch-smollm2.sh",
    );
    None
}
