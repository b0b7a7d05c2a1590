//! One output sink for everything a script or the core prints.
//!
//! `print`, `debug`, streamed chat tokens and progress lines all go through an [`Output`]. The
//! binary points it at stdout; tests and the `tunelab test` runner point it at an in-memory buffer
//! and read it back with [`Output::captured`]. Writes to a closed pipe are dropped silently: a
//! broken pipe (`tunelab run x.rhai | head`) is not a crash.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Where the text goes.
enum Target {
    Stdout,
    Stderr,
    Buffer(Vec<u8>),
    /// Nowhere: the output of a data-parallel rank other than rank 0.
    Discard,
}

/// A cheap-to-clone handle on one output destination.
#[derive(Clone)]
pub struct Output {
    target: Arc<Mutex<Target>>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.lock() {
            Target::Stdout => "stdout",
            Target::Stderr => "stderr",
            Target::Buffer(_) => "buffer",
            Target::Discard => "discard",
        };
        write!(f, "Output({kind})")
    }
}

impl Output {
    /// Text goes to the process's standard output.
    pub fn stdout() -> Self {
        Self::with(Target::Stdout)
    }

    /// Text goes to the process's standard error.
    pub fn stderr() -> Self {
        Self::with(Target::Stderr)
    }

    /// Text is dropped (ranks other than rank 0 of a data-parallel job print nothing).
    pub fn discard() -> Self {
        Self::with(Target::Discard)
    }

    /// Text is kept in memory; read it with [`Output::captured`].
    pub fn capture() -> Self {
        Self::with(Target::Buffer(Vec::new()))
    }

    fn with(target: Target) -> Self {
        Output {
            target: Arc::new(Mutex::new(target)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Target> {
        // A panic while printing cannot leave the target half-updated in a way that matters.
        self.target.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write `text` as is (no newline added) and flush, so streamed tokens appear at once.
    pub fn write(&self, text: &str) {
        match &mut *self.lock() {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Target::Stderr => {
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
            Target::Buffer(buf) => buf.extend_from_slice(text.as_bytes()),
            Target::Discard => {}
        }
    }

    /// Write `text` followed by a newline.
    pub fn line(&self, text: &str) {
        let mut s = String::with_capacity(text.len() + 1);
        s.push_str(text);
        s.push('\n');
        self.write(&s);
    }

    /// Whether this sink goes to the terminal streams (a progress bar may be drawn beside it).
    pub fn is_terminal_stream(&self) -> bool {
        matches!(&*self.lock(), Target::Stdout | Target::Stderr)
    }

    /// Everything written so far to a capturing sink (empty for stdout/stderr).
    pub fn captured(&self) -> String {
        match &*self.lock() {
            Target::Buffer(buf) => String::from_utf8_lossy(buf).into_owned(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_collects_writes_from_every_clone() {
        let out = Output::capture();
        let clone = out.clone();
        out.write("a");
        clone.line("b");
        assert_eq!(out.captured(), "ab\n");
    }
}
