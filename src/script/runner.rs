//! Running one script: `tunelab run FILE [-- key=value ...]` and `tunelab < FILE`.
//!
//! The script sees its command-line values as the map `ARGS` (numbers and booleans parsed). A `#!`
//! first line is blanked (not removed, so line numbers stay right). A failure comes back as a
//! [`ScriptFailure`] holding the rendered diagnostic (`FILE:LINE:COL: message`, source line, caret).

use std::path::Path;

use rhai::{Dynamic, Engine, Map, Scope};

use super::diagnostic::{source_from_disk_or_stdlib, Diagnostic};
use crate::error::Error;

/// The name scripts see their command-line values under.
pub const ARGS: &str = "ARGS";

/// A script that failed to compile or run.
#[derive(Debug, Clone)]
pub struct ScriptFailure {
    pub diagnostic: Diagnostic,
    /// The full report for stderr: headline, source lines and carets.
    pub rendered: String,
}

/// Parse `key=value` words into the `ARGS` map: integers, floats and `true`/`false` become numbers
/// and booleans, everything else stays a string.
pub fn parse_args(words: &[String]) -> Result<Map, Error> {
    let mut map = Map::new();
    for word in words {
        let (key, value) = word.split_once('=').ok_or_else(|| {
            Error::Usage(format!(
                "script argument \"{word}\" is not key=value (e.g. lr=2e-4 epochs=3)"
            ))
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::Usage(format!(
                "script argument \"{word}\" has an empty key"
            )));
        }
        map.insert(key.into(), parse_value(value));
    }
    Ok(map)
}

fn parse_value(text: &str) -> Dynamic {
    if let Ok(i) = text.parse::<rhai::INT>() {
        Dynamic::from(i)
    } else if let Ok(f) = text.parse::<rhai::FLOAT>() {
        Dynamic::from(f)
    } else if text == "true" || text == "false" {
        Dynamic::from(text == "true")
    } else {
        Dynamic::from(text.to_string())
    }
}

/// Blank a `#!` first line so the rest keeps its line numbers.
pub fn strip_shebang(text: &str) -> String {
    if text.starts_with("#!") {
        match text.find('\n') {
            Some(end) => text[end..].to_string(),
            None => String::new(),
        }
    } else {
        text.to_string()
    }
}

/// Read `path` (an I/O error names the file).
pub fn read_script(path: &Path) -> Result<String, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io_hint(path, e, "check the path; scripts end in .rhai"))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::data(
            path,
            format!("byte {}", e.utf8_error().valid_up_to()),
            "not valid UTF-8 text; save the script as UTF-8",
        )
    })
}

/// Compile and run `text`, known to the user as `name`, with `args` as `ARGS`.
pub fn run_source(
    engine: &Engine,
    name: &str,
    text: &str,
    args: Map,
) -> Result<Dynamic, ScriptFailure> {
    let text = strip_shebang(text);
    let mut scope = Scope::new();
    scope.push_constant(ARGS, args);
    let fail = |err: &rhai::EvalAltResult| {
        let diagnostic = Diagnostic::new(err, name);
        let rendered = diagnostic.render(&|file| {
            if file == name {
                Some(text.clone())
            } else {
                source_from_disk_or_stdlib(file)
            }
        });
        ScriptFailure {
            diagnostic,
            rendered,
        }
    };
    let mut ast = engine
        .compile_with_scope(&scope, &text)
        .map_err(|e| fail(&e.into()))?;
    ast.set_source(name);
    engine
        .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
        .map_err(|e| fail(&e))
}

/// A value as `print` would show it, using the type's registered `to_string`.
pub fn display(engine: &Engine, value: Dynamic) -> String {
    let mut scope = Scope::new();
    scope.push("value", value.clone());
    engine
        .eval_with_scope::<String>(&mut scope, "value.to_string()")
        .unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::engine::{build_engine, EngineOptions, HostContext};

    #[test]
    fn args_are_typed() {
        let words: Vec<String> = ["lr=2e-4", "epochs=3", "fast=true", "name=run a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let map = parse_args(&words).unwrap();
        assert_eq!(map["lr"].as_float().unwrap(), 2e-4);
        assert_eq!(map["epochs"].as_int().unwrap(), 3);
        assert!(map["fast"].as_bool().unwrap());
        assert_eq!(map["name"].to_string(), "run a");
        assert!(parse_args(&["oops".to_string()]).is_err());
    }

    #[test]
    fn shebang_is_blanked_keeping_line_numbers() {
        let ctx = HostContext::capture();
        let engine = build_engine(&ctx, &EngineOptions::default());
        let err = run_source(
            &engine,
            "s.rhai",
            "#!/usr/bin/env tunelab\nlet x = 1;\nthrow 1;",
            Map::new(),
        )
        .unwrap_err();
        assert_eq!(err.diagnostic.locations[0].line, Some(3));
    }

    #[test]
    fn args_reach_the_script_and_missing_ones_default() {
        let ctx = HostContext::capture();
        let engine = build_engine(&ctx, &EngineOptions::default());
        let args = parse_args(&["n=4".to_string()]).unwrap();
        let v = run_source(
            &engine,
            "s.rhai",
            "ARGS.n * 10 + (ARGS.get(\"m\") ?? 1)",
            args,
        )
        .unwrap();
        assert_eq!(v.as_int().unwrap(), 41);
    }
}
