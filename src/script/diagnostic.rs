//! Script errors as a user reads them: `FILE:LINE:COL: message`, the source line, a caret.
//!
//! Rhai reports an error inside a called function or an imported module as a chain of wrappers
//! (`ErrorInFunctionCall`, `ErrorInModule`). [`Diagnostic::new`] walks that chain: the first location
//! is where the top-level script failed (the line the user wrote), and each further location is one
//! step inside a function or module, naming its file (e.g. `stdlib/assert.rhai`) and line. The leaf
//! error gives the message; a thrown string is shown as is, without Rhai's "Runtime error:" prefix.

use rhai::{EvalAltResult, Position};

use super::{call_errors, help, resolver, stdlib};

/// One place in one source file.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// The file as the user knows it (`scripts/x.rhai`, `stdlib/assert.rhai`, `<stdin>`).
    pub file: String,
    /// 1-based line and column, when Rhai knows them.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// How we got here (`in function 'assert_eq'`); empty for the top level.
    pub context: String,
}

/// A script error ready to print.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The error message itself.
    pub message: String,
    /// The top-level location first, then each step inward.
    pub locations: Vec<Location>,
    /// The run was stopped by Ctrl-C rather than failing.
    pub cancelled: bool,
}

impl Diagnostic {
    /// Analyse `err`, raised while running the script known to the user as `file`.
    pub fn new(err: &EvalAltResult, file: &str) -> Self {
        let mut locations = vec![location(file, err.position(), String::new())];
        let mut current_file = file.to_string();
        let mut err = err;
        loop {
            let (inner, next_file, context) = match err {
                EvalAltResult::ErrorInFunctionCall(name, src, inner, _) => {
                    let next = if src.is_empty() {
                        current_file.clone()
                    } else {
                        src.clone()
                    };
                    let context = if name.starts_with("anon$") {
                        "in closure".to_string()
                    } else {
                        format!("in function '{name}'")
                    };
                    (inner, next, context)
                }
                EvalAltResult::ErrorInModule(path, inner, _) => {
                    let next = if path.starts_with(stdlib::PREFIX) {
                        stdlib::source_name(path)
                    } else {
                        let file = resolver::import_file(path, Some(&current_file));
                        file.to_string_lossy().into_owned()
                    };
                    (inner, next, format!("in module \"{path}\""))
                }
                _ => break,
            };
            locations.push(location(&next_file, inner.position(), context));
            current_file = next_file;
            err = inner;
        }
        // A location without a line adds nothing but noise (e.g. a wrapper around a native error).
        let first = locations.remove(0);
        locations.retain(|l| l.line.is_some());
        locations.insert(0, first);
        Diagnostic {
            message: leaf_message(err),
            locations,
            cancelled: matches!(err, EvalAltResult::ErrorTerminated(..)),
        }
    }

    /// The first line: `FILE:LINE:COL: message`.
    pub fn headline(&self) -> String {
        format!("{}: {}", place(&self.locations[0]), self.message)
    }

    /// The whole report; `source_of` returns the text of a file by its display name.
    pub fn render(&self, source_of: &dyn Fn(&str) -> Option<String>) -> String {
        let mut out = self.headline();
        out.push('\n');
        for (i, loc) in self.locations.iter().enumerate() {
            if i > 0 {
                out.push_str(&format!("  {} at {}\n", loc.context, place(loc)));
            }
            if let Some(snippet) = snippet(loc, source_of) {
                out.push_str(&snippet);
            }
        }
        out
    }
}

fn location(file: &str, pos: Position, context: String) -> Location {
    Location {
        file: file.to_string(),
        line: pos.line(),
        column: pos.position(),
        context,
    }
}

fn place(loc: &Location) -> String {
    match (loc.line, loc.column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", loc.file),
        (Some(l), None) => format!("{}:{l}", loc.file),
        _ => loc.file.clone(),
    }
}

/// The message of the innermost error, without Rhai's position suffix.
fn leaf_message(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorRuntime(value, _) if value.is_string() => value.to_string(),
        EvalAltResult::ErrorTerminated(..) => "cancelled (Ctrl-C)".to_string(),
        EvalAltResult::ErrorFunctionNotFound(signature, _) => {
            call_errors::explain_not_found(signature, &help::catalog())
        }
        other => {
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            match text.strip_suffix(&suffix) {
                Some(bare) if !other.position().is_none() => bare.to_string(),
                _ => text,
            }
        }
    }
}

/// `  12 | source line` then a caret under the column.
fn snippet(loc: &Location, source_of: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let line_no = loc.line?;
    let text = source_of(&loc.file)?;
    let line = text.split('\n').nth(line_no - 1)?.trim_end_matches('\r');
    let gutter = line_no.to_string().len().max(3);
    let mut out = format!("{line_no:>gutter$} | {line}\n");
    if let Some(col) = loc.column {
        // Keep tabs so the caret lines up with the source as the terminal shows it.
        let pad: String = line
            .chars()
            .take(col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!("{:>gutter$} | {pad}^\n", ""));
    }
    Some(out)
}

/// Source lookup for files on disk and the embedded stdlib.
pub fn source_from_disk_or_stdlib(name: &str) -> Option<String> {
    stdlib::source_by_file_name(name)
        .map(str::to_owned)
        .or_else(|| std::fs::read_to_string(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::engine::{build_engine, EngineOptions, HostContext};

    fn fail(script: &str) -> Diagnostic {
        let engine = build_engine(&HostContext::capture(), &EngineOptions::default());
        let mut ast = match engine.compile(script) {
            Ok(ast) => ast,
            Err(e) => return Diagnostic::new(&EvalAltResult::from(e), "t.rhai"),
        };
        ast.set_source("t.rhai");
        let err = engine.run_ast(&ast).unwrap_err();
        Diagnostic::new(&err, "t.rhai")
    }

    #[test]
    fn thrown_string_has_file_line_column_and_caret() {
        let script = "let a = 1;\nlet b = 2;\n  throw \"boom\";\n";
        let d = fail(script);
        assert_eq!(d.headline(), "t.rhai:3:3: boom");
        let text = d.render(&|_| Some(script.to_string()));
        assert!(
            text.contains("  3 |   throw \"boom\";\n    |   ^\n"),
            "{text}"
        );
    }

    #[test]
    fn error_inside_stdlib_names_the_caller_line_and_the_module_line() {
        let d = fail("import \"lab/assert\" as t;\n\nt::assert_eq(1, 2);");
        assert_eq!(d.locations[0].line, Some(3));
        assert!(d.message.contains("expected 2"), "{}", d.message);
        let inner = &d.locations[1];
        assert_eq!(inner.file, "stdlib/assert.rhai");
        assert_eq!(inner.context, "in function 'assert_eq'");
        assert!(inner.line.is_some());
    }

    #[test]
    fn a_method_called_with_the_wrong_type_names_script_types_and_forms() {
        let d = fail("let c = chat(load_model(\"tiny\"));\nc.ask(5);");
        assert_eq!(d.locations[0].line, Some(2));
        assert!(
            d.message
                .starts_with("ask(Chat, int): argument 2 (text) must be a string, not an int"),
            "{}",
            d.message
        );
        assert!(!d.message.contains("tunelab::"), "{}", d.message);
    }

    #[test]
    fn syntax_error_is_located() {
        let d = fail("let x = 1;\nlet = 2;");
        assert_eq!(d.locations[0].line, Some(2));
        assert!(d.message.starts_with("Syntax error"), "{}", d.message);
    }
}
