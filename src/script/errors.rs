//! Turning core errors into Rhai errors.
//!
//! Native functions return [`ScriptResult`]; a core [`crate::Error`] becomes a Rhai runtime error
//! that carries the core message unchanged (path, record, field, hint). Rhai fills in the script
//! position of the call, so the user sees `script.rhai:3:9: data/x.json: record 17: ...`.
//! A cancelled core operation becomes the same termination that Ctrl-C in Rhai code produces.

use rhai::{Dynamic, EvalAltResult, Position};

use super::engine::CANCELLED;
use crate::error::Error;

/// The result type of every native function exposed to scripts.
pub type ScriptResult<T> = Result<T, Box<EvalAltResult>>;

/// Map a core error to the Rhai error a script sees.
pub fn to_rhai(err: Error) -> Box<EvalAltResult> {
    match err {
        Error::Cancelled => Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::from(CANCELLED),
            Position::NONE,
        )),
        other => runtime(other.to_string()),
    }
}

/// A plain runtime error with `message` (position filled in by Rhai at the call site).
pub fn runtime(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    ))
}

/// Extension to turn `crate::Result<T>` into [`ScriptResult<T>`] with `?`-friendly syntax.
pub trait IntoScript<T> {
    /// Convert the core result for a native function's return.
    fn script(self) -> ScriptResult<T>;
}

impl<T> IntoScript<T> for crate::Result<T> {
    fn script(self) -> ScriptResult<T> {
        self.map_err(to_rhai)
    }
}
