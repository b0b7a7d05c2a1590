//! The one engine factory, shared by the REPL, `tunelab run`, `tunelab test` and Rust tests.
//!
//! [`build_engine`] returns a Rhai [`Engine`] with every tunelab API area registered, the
//! embedded stdlib resolver installed, `print`/`debug` routed to the context's [`Output`], and
//! Ctrl-C wired to the context's [`CancelToken`]. Native functions reach the same context through
//! [`host`], so a training loop prints to the same sink and stops on the same flag.

use rhai::{Dynamic, Engine, NativeCallContext};

use crate::cancel::CancelToken;
use crate::output::Output;

use super::resolver::ScriptResolver;
use super::{
    api_auto_mix, api_core, api_curves, api_data, api_dist, api_export, api_imatrix, api_model,
    api_quant, api_serve, api_train,
};

/// What the scripts of one engine share with the native code they call.
#[derive(Clone, Debug)]
pub struct HostContext {
    /// Where `print`, `debug` and streamed output go.
    pub output: Output,
    /// Set by Ctrl-C; checked between Rhai operations and inside long native loops.
    pub cancel: CancelToken,
}

impl HostContext {
    /// A context printing to stdout with a fresh cancel flag.
    pub fn stdout() -> Self {
        HostContext {
            output: Output::stdout(),
            cancel: CancelToken::new(),
        }
    }

    /// A context capturing output in memory (for tests and the test runner).
    pub fn capture() -> Self {
        HostContext {
            output: Output::capture(),
            cancel: CancelToken::new(),
        }
    }
}

/// Knobs of the engine that differ between front ends.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Cache imported script files (the REPL turns this off so edited files reload).
    pub cache_imports: bool,
    /// Reject undefined variables and modules when compiling, before anything runs.
    pub strict_variables: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_imports: true,
            strict_variables: true,
        }
    }
}

/// How deep script function calls may nest (Rhai's debug-build default of 8 is too small).
pub const MAX_CALL_LEVELS: usize = 64;

/// How deeply expressions may nest, at top level and inside functions (Rhai's debug-build
/// defaults reject ordinary stdlib code).
pub const MAX_EXPR_DEPTH: usize = 128;
pub const MAX_FN_EXPR_DEPTH: usize = 64;

/// A signature as Rhai prints it for each area, used to build `:help`.
pub type AreaModule = (&'static str, rhai::Module);

/// Every API area, in the order `:help` lists them.
pub fn api_modules() -> Vec<AreaModule> {
    vec![
        (api_core::AREA, api_core::module()),
        (api_data::AREA, api_data::module()),
        (api_model::AREA, api_model::module()),
        (api_train::AREA, api_train::module()),
        (api_curves::AREA, api_curves::module()),
        (api_quant::AREA, api_quant::module()),
        (api_imatrix::AREA, api_imatrix::module()),
        (api_auto_mix::AREA, api_auto_mix::module()),
        (api_export::AREA, api_export::module()),
        (api_serve::AREA, api_serve::module()),
        (api_dist::AREA, api_dist::module()),
    ]
}

/// Build a fully configured engine whose scripts print to and cancel through `ctx`.
pub fn build_engine(ctx: &HostContext, options: &EngineOptions) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_call_levels(MAX_CALL_LEVELS);
    engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH);
    engine.set_strict_variables(options.strict_variables);
    engine.set_fail_on_invalid_map_property(true);
    engine.set_module_resolver(ScriptResolver::new(options.cache_imports));
    engine.set_default_tag(Dynamic::from(ctx.clone()));

    for (_, module) in api_modules() {
        engine.register_global_module(module.into());
    }

    let out = ctx.output.clone();
    engine.on_print(move |text| out.line(text));
    let out = ctx.output.clone();
    engine.on_debug(move |text, source, pos| {
        let place = match (source, pos.line()) {
            (Some(src), Some(line)) => format!("{src}:{line}: "),
            (None, Some(line)) => format!("line {line}: "),
            _ => String::new(),
        };
        out.line(&format!("[debug] {place}{text}"));
    });
    let cancel = ctx.cancel.clone();
    engine.on_progress(move |_ops| {
        if cancel.is_cancelled() {
            Some(Dynamic::from(CANCELLED))
        } else {
            None
        }
    });
    engine
}

/// An engine that only parses (for the REPL's input check and the help catalogue), with the same
/// nesting limits as the real one.
pub fn parse_only_engine() -> Engine {
    let mut engine = Engine::new_raw();
    engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH);
    engine
}

/// The token an evaluation stopped by Ctrl-C terminates with.
pub const CANCELLED: &str = "cancelled";

/// The host context of the engine running the current native call.
pub fn host(ctx: &NativeCallContext) -> HostContext {
    ctx.tag()
        .and_then(|tag| tag.clone().try_cast::<HostContext>())
        .unwrap_or_else(HostContext::stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_and_debug_go_to_the_context_output() {
        let ctx = HostContext::capture();
        let engine = build_engine(&ctx, &EngineOptions::default());
        engine.run(r#"print("hello"); debug("x")"#).unwrap();
        let text = ctx.output.captured();
        assert!(text.starts_with("hello\n"), "{text}");
        assert!(text.contains("[debug] line 1: \"x\""), "{text}");
    }

    #[test]
    fn cancel_flag_stops_an_endless_loop() {
        let ctx = HostContext::capture();
        let engine = build_engine(&ctx, &EngineOptions::default());
        ctx.cancel.cancel();
        let err = engine.run("loop {}").unwrap_err();
        assert!(
            matches!(*err, rhai::EvalAltResult::ErrorTerminated(..)),
            "{err}"
        );
    }

    #[test]
    fn stdlib_modules_import_from_the_binary() {
        let ctx = HostContext::capture();
        let engine = build_engine(&ctx, &EngineOptions::default());
        let n: i64 = engine
            .eval(r#"import "lab/assert" as t; t::assert_eq(2, 1 + 1); 7"#)
            .unwrap();
        assert_eq!(n, 7);
    }
}
