//! The one error type of the core library.
//!
//! Every failure a user can cause (a missing file, a bad record, an unknown option) becomes an
//! [`Error`] whose message says *where* (path, record/line, field or key) and *what to do*. The
//! script layer turns these into Rhai errors; the binary turns them into exit codes
//! ([`Error::exit_code`]): 1 for failures of the work itself, 2 for usage and I/O problems.

use std::path::{Path, PathBuf};

/// Result alias used throughout the core library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{}: {source}{}", path.display(), hint_suffix(.hint))]
    Io {
        path: PathBuf,
        source: std::io::Error,
        /// What the user can do about it (may be empty).
        hint: String,
    },

    /// A file was read but its content is wrong at a known place.
    #[error("{}: {location}: {message}", path.display())]
    Data {
        path: PathBuf,
        /// e.g. `record 17: field "output"` or `line 3`.
        location: String,
        message: String,
    },

    /// An option map or argument has an unknown key or a value of the wrong kind.
    #[error("{what}: {message}")]
    Config { what: String, message: String },

    /// The command line was used wrongly.
    #[error("{0}")]
    Usage(String),

    /// The user pressed Ctrl-C (or another cancel request arrived) while work was running.
    #[error("cancelled by the user (Ctrl-C)")]
    Cancelled,

    /// Anything else, with enough words to act on.
    #[error("{0}")]
    Msg(String),
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" (HINT: {hint})")
    }
}

impl Error {
    /// An I/O error on `path`, without a hint.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
            hint: String::new(),
        }
    }

    /// An I/O error on `path` with advice for the user.
    pub fn io_hint(
        path: impl AsRef<Path>,
        source: std::io::Error,
        hint: impl Into<String>,
    ) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
            hint: hint.into(),
        }
    }

    /// A content error at `location` (e.g. `record 17: field "output"`) inside `path`. Line
    /// breaks are shown as `\n`: names and values quoted from a file may hold them, and the error
    /// stays one line.
    pub fn data(
        path: impl AsRef<Path>,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            location: one_line(location.into()),
            message: one_line(message.into()),
        }
    }

    /// A bad option in the config map or argument list called `what`.
    pub fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            what: what.into(),
            message: message.into(),
        }
    }

    /// A free-form error message.
    pub fn msg(message: impl Into<String>) -> Self {
        Error::Msg(message.into())
    }

    /// The process exit code this error maps to: 2 for usage and I/O errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Io { .. } | Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// `text` with its line breaks shown as `\n` and `\r`.
fn one_line(text: String) -> String {
    if !text.contains(['\n', '\r']) {
        return text;
    }
    text.replace('\n', "\\n").replace('\r', "\\r")
}

/// A candle error as one line: its contexts joined with `: `, without the backtrace candle appends
/// to its errors when `RUST_BACKTRACE` is set (its own Display puts each on a line of its own).
pub fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        E::WrappedContext { wrapped, context } => format!("{context}: {wrapped}"),
        other => other.to_string(),
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Msg(format!("tensor error: {}", candle_message(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_error_names_path_record_and_field() {
        let e = Error::data(
            "data/x.json",
            "record 17: field \"output\"",
            "expected string",
        );
        assert_eq!(
            e.to_string(),
            "data/x.json: record 17: field \"output\": expected string"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn io_error_carries_hint_and_exit_code_2() {
        let src = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = Error::io_hint("model.gguf", src, "run scripts/fetch-smollm2.sh");
        assert_eq!(
            e.to_string(),
            "model.gguf: No such file or directory (HINT: run scripts/fetch-smollm2.sh)"
        );
        assert_eq!(e.exit_code(), 2);
    }

    /// Found by tests/mutation.rs: a role read from a file held a line break, and candle's
    /// contexts and backtraces each take a line; errors stay one line.
    #[test]
    fn data_errors_and_candle_messages_are_one_line() {
        let e = Error::data("x.jsonl", "line 3", "role \"functio\n_call\" at position 1");
        assert_eq!(
            e.to_string(),
            "x.jsonl: line 3: role \"functio\\n_call\" at position 1"
        );
        let candle = candle_core::Error::UnwrapNone
            .bt()
            .context("missing GGUF metadata key `tokenizer.ggml.merges`");
        assert_eq!(
            candle_message(&candle),
            "missing GGUF metadata key `tokenizer.ggml.merges`: unwrap none"
        );
    }
}
