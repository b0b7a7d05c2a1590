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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::diagnostic::Diagnostic;
    use crate::script::engine::{build_engine, EngineOptions, HostContext};

    #[test]
    fn core_error_reaches_the_script_with_its_position_and_message() {
        let mut engine = build_engine(&HostContext::capture(), &EngineOptions::default());
        engine.register_fn("load_bad", || -> ScriptResult<()> {
            Err(Error::data(
                "data/x.json",
                "record 17: field \"output\"",
                "expected string",
            ))
            .script()
        });
        let mut ast = engine.compile("let a = 1;\n  load_bad();").unwrap();
        ast.set_source("s.rhai");
        let err = engine.run_ast(&ast).unwrap_err();
        assert_eq!(
            Diagnostic::new(&err, "s.rhai").headline(),
            "s.rhai:2:3: data/x.json: record 17: field \"output\": expected string"
        );
    }

    #[test]
    fn cancelled_core_error_is_a_termination() {
        let err = to_rhai(Error::Cancelled);
        assert!(matches!(*err, EvalAltResult::ErrorTerminated(..)));
    }
}
