//! Explaining a call that no function matches, in the script's own words.
//!
//! Rhai reports `chat(m).ask(5)` as `Function not found: ask (tunelab::…::Chat, i64)`: Rust paths
//! and Rust number types a script user never wrote. [`explain_not_found`] rewrites that with the
//! script's type names (`ask(Chat, int)`) and, when the function exists in other forms, says
//! which argument is wrong and lists the forms `:help` knows (`ask(chat: Chat, text: string)`).

use super::help::FnDoc;

/// The script's name for a type as Rhai or a signature spells it (`i64` → `int`, a Rust path →
/// its last segment).
pub fn script_type_name(rust: &str) -> String {
    // Rhai lists the Rust types a string argument can be: `&str | ImmutableString | String`.
    let first = rust.split(" | ").next().unwrap_or(rust);
    let t = first
        .trim()
        .trim_start_matches("&mut ")
        .trim_start_matches('&');
    // The type a native function returns: `ScriptResult<Model>`, `Result<Model, Box<…>>`.
    let t = match t.split_once('<') {
        Some((wrapper, inner)) if wrapper.ends_with("Result") => {
            let inner = inner.strip_suffix('>').unwrap_or(inner);
            return script_type_name(split_top_level(inner).first().map_or("", |s| s.as_str()));
        }
        _ => t,
    };
    let last = t.rsplit("::").next().unwrap_or(t);
    match last {
        "i64" | "i32" | "INT" | "usize" | "u64" => "int",
        "f64" | "f32" | "FLOAT" => "float",
        "str" | "String" | "ImmutableString" | "string" => "string",
        "Array" | "array" | "Vec<Dynamic>" => "array",
        "Map" | "map" => "map",
        "Dynamic" | "?" => "any",
        "bool" => "bool",
        "char" => "char",
        "()" => "()",
        other => other,
    }
    .to_string()
}

/// "a string", "an int", "a Model".
fn with_article(type_name: &str) -> String {
    let article = match type_name.chars().next() {
        Some(c) if "aeiouAEIOU".contains(c) => "an",
        _ => "a",
    };
    format!("{article} {type_name}")
}

/// A native function's signature as Rhai's metadata spells it (`take(ds: &mut Dataset, n: i64)
/// -> Result<Dataset, Box<EvalAltResult>>`) in the script's words (`take(ds: Dataset, n: int) ->
/// Dataset`).
pub fn script_signature(rust_signature: &str) -> String {
    let name = rust_signature.split('(').next().unwrap_or(rust_signature);
    let params: Vec<String> = parameters(rust_signature)
        .into_iter()
        .map(|(p, t)| if p.is_empty() { t } else { format!("{p}: {t}") })
        .collect();
    let ret = returned_type(rust_signature)
        .map(|r| format!(" -> {}", script_type_name(r)))
        .unwrap_or_default();
    format!("{name}({}){ret}", params.join(", "))
}

/// What follows the parameter list's `->`, if anything.
fn returned_type(signature: &str) -> Option<&str> {
    let close = parameter_list_end(signature)?;
    let rest = signature[close + 1..].trim();
    rest.strip_prefix("->")
        .map(str::trim)
        .filter(|r| !r.is_empty() && *r != "()")
}

/// The index of the parenthesis that closes the parameter list.
fn parameter_list_end(signature: &str) -> Option<usize> {
    let open = signature.find('(')?;
    let mut depth = 0usize;
    for (i, c) in signature[open..].char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => {
                depth = depth.saturating_sub(1);
                if depth == 0 && c == ')' {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The parameters of a catalog signature (`name(a: T, b: U) -> R`) as (name, script type).
fn parameters(signature: &str) -> Vec<(String, String)> {
    let (Some(open), Some(close)) = (signature.find('('), parameter_list_end(signature)) else {
        return Vec::new();
    };
    let inner = &signature[open + 1..close];
    if inner.trim().is_empty() {
        return Vec::new();
    }
    split_top_level(inner)
        .into_iter()
        .map(|p| match p.split_once(':') {
            Some((name, ty)) => (name.trim().to_string(), script_type_name(ty)),
            None => (String::new(), script_type_name(&p)),
        })
        .collect()
}

/// `a: Vec<A, B>, b: C` split at the commas outside brackets.
fn split_top_level(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' | '<' | '[' => depth += 1,
            ')' | '>' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(text[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim().to_string());
    parts
}

/// Rhai's `name (T1, T2)` as the function name and the script types of the arguments.
fn parse_call(rhai_signature: &str) -> (String, Vec<String>) {
    let (name, rest) = match rhai_signature.find('(') {
        Some(i) => (&rhai_signature[..i], &rhai_signature[i..]),
        None => (rhai_signature, "()"),
    };
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or("");
    let args = if inner.trim().is_empty() {
        Vec::new()
    } else {
        split_top_level(inner)
            .iter()
            .map(|a| script_type_name(a))
            .collect()
    };
    (name.trim().to_string(), args)
}

/// The message for Rhai's "function not found" with `rhai_signature` (`ask (Chat, i64)`), given
/// the documented functions.
pub fn explain_not_found(rhai_signature: &str, catalog: &[FnDoc]) -> String {
    let (name, args) = parse_call(rhai_signature);
    let call = format!("{name}({})", args.join(", "));
    let forms: Vec<&FnDoc> = catalog.iter().filter(|f| f.name == name).collect();
    if forms.is_empty() {
        return format!("Function not found: {call}");
    }
    let listed = forms
        .iter()
        .map(|f| f.signature.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    // One form takes this many arguments: name the ones of the wrong type.
    let same_arity: Vec<Vec<(String, String)>> = forms
        .iter()
        .map(|f| parameters(&f.signature))
        .filter(|p| p.len() == args.len())
        .collect();
    if let [params] = same_arity.as_slice() {
        let wrong: Vec<String> = params
            .iter()
            .zip(&args)
            .enumerate()
            .filter(|(_, ((_, want), got))| want != "any" && want != *got)
            .map(|(i, ((pname, want), got))| {
                let which = if pname.is_empty() {
                    format!("argument {}", i + 1)
                } else {
                    format!("argument {} ({pname})", i + 1)
                };
                format!(
                    "{which} must be {}, not {}",
                    with_article(want),
                    with_article(got)
                )
            })
            .collect();
        if !wrong.is_empty() {
            return format!("{call}: {}; {name} is {listed}", wrong.join(", "));
        }
    }
    let counts = {
        let mut c: Vec<usize> = forms
            .iter()
            .map(|f| parameters(&f.signature).len())
            .collect();
        c.sort();
        c.dedup();
        c.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    format!(
        "{call}: no form of {name} takes these arguments ({counts} argument(s) expected); the \
         forms are: {listed}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, signature: &str) -> FnDoc {
        FnDoc {
            area: "model".into(),
            name: name.into(),
            signature: signature.into(),
            docs: Vec::new(),
        }
    }

    #[test]
    fn a_wrong_argument_type_is_named_with_script_types() {
        let catalog = [doc("ask", "ask(chat: Chat, text: string) -> string")];
        let m = explain_not_found("ask (tunelab::script::api_model::Chat, i64)", &catalog);
        assert_eq!(
            m,
            "ask(Chat, int): argument 2 (text) must be a string, not an int; \
             ask is ask(chat: Chat, text: string) -> string"
        );
    }

    #[test]
    fn a_wrong_argument_count_lists_every_form() {
        let catalog = [
            doc("load_model", "load_model(path_or_preset: string) -> Model"),
            doc(
                "load_model",
                "load_model(path_or_preset: string, opts: Map) -> Model",
            ),
        ];
        let m = explain_not_found("load_model ()", &catalog);
        assert!(m.starts_with("load_model(): no form of load_model takes these arguments (1 or 2 argument(s) expected)"), "{m}");
        assert!(m.contains("opts: Map"), "{m}");
    }

    #[test]
    fn an_unknown_function_keeps_rhai_words_with_script_types() {
        assert_eq!(
            explain_not_found("nope (i64, f64, rhai::Map)", &[]),
            "Function not found: nope(int, float, map)"
        );
    }

    #[test]
    fn rust_signatures_read_in_script_words() {
        assert_eq!(
            script_signature(
                "take(ds: &mut Dataset, n: i64) -> Result<Dataset, Box<EvalAltResult>>"
            ),
            "take(ds: Dataset, n: int) -> Dataset"
        );
        assert_eq!(
            script_signature("load_model(path_or_preset: &str, opts: Map) -> ScriptResult<Model>"),
            "load_model(path_or_preset: string, opts: map) -> Model"
        );
        assert_eq!(
            script_signature("reset(chat: &mut Chat)"),
            "reset(chat: Chat)"
        );
        assert_eq!(
            script_type_name("&str | ImmutableString | String"),
            "string"
        );
    }

    #[test]
    fn signatures_split_at_top_level_commas_only() {
        assert_eq!(
            parameters("f(a: Vec<A, B>, b: i64) -> Result<X, Y>"),
            vec![("a".into(), "Vec<A, B>".into()), ("b".into(), "int".into())]
        );
    }
}
