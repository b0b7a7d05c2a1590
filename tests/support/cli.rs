//! Running the `tunelab` binary from a test: its exit status and output, and the shape every
//! refusal must have (a failing status, one line naming what was wrong, no panic).

use std::path::Path;
use std::process::Command;

/// `tunelab ARGS...` run in `dir`: (exit status, stdout, stderr).
pub fn tunelab_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A refusal: a failing status and one line naming `what`, no panic.
#[allow(dead_code)] // not every test binary that includes this file checks refusals
pub fn refused(run: (i32, String, String), what: &str) {
    let (code, _, err) = run;
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(what), "{what} not in: {err}");
}
