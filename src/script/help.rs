//! The function catalogue behind `:help`, `:help NAME` and Tab completion.
//!
//! Native functions are listed per API area (each `api_*` module is one area) with the signature
//! and doc comment Rhai's metadata keeps for them; stdlib functions come from the `///` comments
//! in `stdlib/*.rhai`, listed under their import path (`lab/assert`).

use rhai::{Engine, FnAccess};

use super::engine::{api_modules, parse_only_engine};
use super::stdlib;

/// One documented function.
#[derive(Debug, Clone)]
pub struct FnDoc {
    /// `core`, `data`, ... for native functions; `lab/assert`, ... for stdlib ones.
    pub area: String,
    pub name: String,
    /// e.g. `sleep(seconds: f64)` or `lab/assert::assert_eq(actual, expected)`.
    pub signature: String,
    /// The doc comment, one entry per line, without the `///`.
    pub docs: Vec<String>,
}

/// Every documented function: native areas first (in registration order), then the stdlib.
pub fn catalog() -> Vec<FnDoc> {
    let mut all = Vec::new();
    for (area, module) in api_modules() {
        let mut engine = Engine::new_raw();
        engine.register_global_module(module.into());
        let json = engine.gen_fn_metadata_to_json(false).unwrap_or_default();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let functions = parsed["functions"].as_array().cloned().unwrap_or_default();
        for f in functions {
            let name = f["name"].as_str().unwrap_or_default().to_string();
            if name.contains('$') {
                continue; // property getters/setters and operators are not called by name
            }
            let signature = f["signature"].as_str().unwrap_or(&name).to_string();
            let docs = f["docComments"]
                .as_array()
                .map(|lines| {
                    lines
                        .iter()
                        .filter_map(|l| l.as_str())
                        .flat_map(doc_lines)
                        .collect()
                })
                .unwrap_or_default();
            all.push(FnDoc {
                area: area.to_string(),
                name,
                signature: tidy_signature(&signature),
                docs,
            });
        }
    }
    let engine = parse_only_engine();
    for (path, text) in stdlib::STDLIB {
        let Ok(ast) = engine.compile(text) else {
            continue;
        };
        for f in ast.iter_functions() {
            if f.access == FnAccess::Private {
                continue;
            }
            all.push(FnDoc {
                area: path.to_string(),
                name: f.name.to_string(),
                signature: format!("{path}::{}({})", f.name, f.params.join(", ")),
                docs: f.comments.iter().flat_map(|c| doc_lines(c)).collect(),
            });
        }
    }
    all
}

/// Split a raw doc comment (`/// text` lines or a `/** */` block) into plain lines.
fn doc_lines(raw: &str) -> Vec<String> {
    raw.lines()
        .map(|l| {
            let l = l.trim();
            let l = l
                .strip_prefix("///")
                .or_else(|| l.strip_prefix("/**"))
                .unwrap_or(l);
            let l = l.strip_suffix("*/").unwrap_or(l);
            l.strip_prefix(' ').unwrap_or(l).to_string()
        })
        .collect()
}

/// Rhai writes Rust types into signatures (`&str`, `i64`, `ScriptResult<Model>`); users read the
/// script's names (`string`, `int`, `Model`).
fn tidy_signature(sig: &str) -> String {
    super::call_errors::script_signature(sig)
}

/// `:help` with no argument: every function name, grouped by area.
pub fn overview(catalog: &[FnDoc]) -> String {
    let mut out = String::from("Functions by area (`:help NAME` for details):\n");
    let mut areas: Vec<&str> = Vec::new();
    for f in catalog {
        if !areas.contains(&f.area.as_str()) {
            areas.push(&f.area);
        }
    }
    for area in areas {
        let mut names: Vec<&str> = catalog
            .iter()
            .filter(|f| f.area == area)
            .map(|f| f.name.as_str())
            .collect();
        names.sort();
        names.dedup();
        let how = if area.contains('/') {
            format!("  (import \"{area}\" as x;)")
        } else {
            String::new()
        };
        out.push_str(&format!("  {area}{how}\n    {}\n", names.join(", ")));
    }
    out.push_str("REPL commands: :help [NAME], :vars, :load FILE, :reset, :time EXPR, :chat SESSION (until :end), :quit\n");
    out
}

/// `:help NAME`: every overload of `NAME` with its signature and doc comment.
pub fn describe(catalog: &[FnDoc], name: &str) -> Option<String> {
    let name = name.rsplit("::").next().unwrap_or(name);
    let matches: Vec<&FnDoc> = catalog.iter().filter(|f| f.name == name).collect();
    if matches.is_empty() {
        return None;
    }
    let mut out = String::new();
    for f in matches {
        out.push_str(&format!("{}    [{}]\n", f.signature, f.area));
        for line in &f.docs {
            out.push_str(&format!("    {line}\n"));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_native_and_stdlib_function_has_a_doc_comment() {
        let catalog = catalog();
        assert!(catalog
            .iter()
            .any(|f| f.name == "version" && f.area == "core"));
        assert!(catalog
            .iter()
            .any(|f| f.name == "assert_eq" && f.area == "lab/assert"));
        for f in &catalog {
            assert!(
                !f.docs.is_empty(),
                "{} ({}) has no doc comment",
                f.signature,
                f.area
            );
        }
    }

    #[test]
    fn importance_matrix_functions_are_listed_with_quantization() {
        let catalog = catalog();
        for name in ["imatrix", "load_imatrix", "importance", "stats", "save"] {
            assert!(
                catalog.iter().any(|f| f.name == name && f.area == "quant"),
                "{name} is not in the quant area of :help"
            );
        }
    }

    #[test]
    fn describe_shows_signature_and_docs() {
        let catalog = catalog();
        let text = describe(&catalog, "sleep").unwrap();
        assert!(text.contains("sleep(") && text.contains("Ctrl-C"), "{text}");
        assert!(describe(&catalog, "no_such_function").is_none());
        assert!(overview(&catalog).contains("lab/fmt"));
    }
}
