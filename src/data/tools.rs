//! Tool (function-calling) text for the built-in templates, as LLaMA-Factory writes it
//! (`tool_utils.py`): the tool list that is appended to the system prompt, and the assistant's
//! function-call turns — in the `default`, `llama3` and `qwen` styles.
//!
//! The exact bytes depend on Python's `json.dumps(..., ensure_ascii=False)` (separators `", "` and
//! `": "`, key order as written, optional 4-space indent), which [`py_json`] reproduces.

use serde_json::Value;

use crate::error::{Error, Result};

/// How a template writes tools and calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Default,
    Llama3,
    Qwen,
}

const DEFAULT_TOOL_PROMPT: &str = "You have access to the following tools:\n{tool_text}Use the following format if using a tool:\n```\nAction: tool name (one of [{tool_names}])\nAction Input: the input to the tool, in a JSON format representing the kwargs (e.g. ```{\"input\": \"hello world\", \"num_beams\": 5}```)\n```\n";

const LLAMA3_TOOL_PROMPT: &str = "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\nYou have access to the following functions. To call a function, please respond with JSON for a function call. Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n{tool_text}";

const QWEN_TOOL_PROMPT: &str = "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";

/// JSON as Python's `json.dumps(value, ensure_ascii=False[, indent=n])` writes it.
pub fn py_json(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_py(value, indent, 0, &mut out);
    out
}

fn write_py(value: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() => out.push_str(&py_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => py_string(s, out),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_string(k, out);
                out.push_str(": ");
                write_py(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr`: `1.0`, `0.5`, `1e-05`, `1e+16`.
fn py_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
        return format!("{f:.1}");
    }
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// A tool in OpenAI's `{"type": "function", "function": ...}` wrapping (kept if already wrapped).
fn as_function_tool(tool: &Value) -> Value {
    if tool["type"] == "function" {
        tool.clone()
    } else {
        serde_json::json!({"type": "function", "function": tool})
    }
}

/// The tool text appended to the system prompt for the JSON tool list `tools` ("" when empty).
pub fn tool_text(format: ToolFormat, tools: &str, today: &str) -> Result<String> {
    let list: Value = serde_json::from_str(tools)
        .map_err(|e| Error::msg(format!("tools: not valid JSON ({e}): {tools}")))?;
    let list = match list {
        Value::Array(items) => items,
        other => vec![other],
    };
    if list.is_empty() {
        return Ok(String::new());
    }
    Ok(match format {
        ToolFormat::Default => {
            let mut text = String::new();
            let mut names = Vec::new();
            for tool in &list {
                let tool = if tool["type"] == "function" {
                    &tool["function"]
                } else {
                    tool
                };
                let mut params = String::new();
                if let Some(props) = tool["parameters"]["properties"].as_object() {
                    let required: Vec<&str> = tool["parameters"]["required"]
                        .as_array()
                        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    for (name, p) in props {
                        let req = if required.contains(&name.as_str()) {
                            ", required"
                        } else {
                            ""
                        };
                        let enumeration = match p["enum"].as_array() {
                            Some(e) if !e.is_empty() => format!(
                                ", should be one of [{}]",
                                e.iter()
                                    .map(|v| v
                                        .as_str()
                                        .map(str::to_owned)
                                        .unwrap_or_else(|| v.to_string()))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            _ => String::new(),
                        };
                        let items = match p.get("items") {
                            Some(i)
                                if !i.is_null() && i.as_object().is_none_or(|o| !o.is_empty()) =>
                            {
                                format!(
                                    ", where each item should be {}",
                                    i["type"].as_str().unwrap_or("")
                                )
                            }
                            _ => String::new(),
                        };
                        params.push_str(&format!(
                            "  - {name} ({}{req}): {}{enumeration}{items}\n",
                            p["type"].as_str().unwrap_or(""),
                            p["description"].as_str().unwrap_or("")
                        ));
                    }
                }
                let name = tool["name"].as_str().unwrap_or("");
                text.push_str(&format!(
                    "> Tool Name: {name}\nTool Description: {}\nTool Args:\n{params}\n",
                    tool["description"].as_str().unwrap_or("")
                ));
                names.push(name.to_string());
            }
            DEFAULT_TOOL_PROMPT
                .replace("{tool_text}", &text)
                .replace("{tool_names}", &names.join(", "))
        }
        ToolFormat::Llama3 => {
            let mut text = String::new();
            for tool in &list {
                let wrapped = as_function_tool(tool);
                text.push_str(&py_json(&wrapped, Some(4)));
                text.push_str("\n\n");
            }
            LLAMA3_TOOL_PROMPT
                .replace("{date}", today)
                .replace("{tool_text}", &text)
        }
        ToolFormat::Qwen => {
            let mut text = String::new();
            for tool in &list {
                let wrapped = as_function_tool(tool);
                text.push('\n');
                text.push_str(&py_json(&wrapped, None));
            }
            QWEN_TOOL_PROMPT.replace("{tool_text}", &text)
        }
    })
}

/// An assistant function-call turn: `content` is `{"name", "arguments"}` or a list of them.
pub fn function_text(format: ToolFormat, content: &str) -> Result<String> {
    let parsed: Value = serde_json::from_str(content).map_err(|_| {
        Error::msg(format!(
            "invalid JSON format in function message: {content:?}"
        ))
    })?;
    let calls = match parsed {
        Value::Array(items) => items,
        other => vec![other],
    };
    let mut pairs = Vec::new();
    for c in &calls {
        let name = c["name"]
            .as_str()
            .ok_or_else(|| Error::msg(format!("function message without \"name\": {content:?}")))?;
        pairs.push((name.to_string(), c["arguments"].clone()));
    }
    Ok(match format {
        ToolFormat::Default => pairs
            .iter()
            .map(|(n, a)| format!("Action: {n}\nAction Input: {}", py_json(a, None)))
            .collect::<Vec<_>>()
            .join("\n"),
        ToolFormat::Llama3 => {
            let objects: Vec<Value> = pairs
                .iter()
                .map(|(n, a)| serde_json::json!({"name": n, "parameters": a}))
                .collect();
            if objects.len() == 1 {
                py_json(&objects[0], None)
            } else {
                py_json(&Value::Array(objects), None)
            }
        }
        ToolFormat::Qwen => pairs
            .iter()
            .map(|(n, a)| {
                format!(
                    "<tool_call>\n{}\n</tool_call>",
                    py_json(&serde_json::json!({"name": n, "arguments": a}), None)
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_json_spacing_order_and_escapes() {
        let v: Value = serde_json::from_str(
            r#"{"b": 1, "a": [1.5, 2.0, "x\"y\n", "你好"], "c": {}, "d": 1e-5}"#,
        )
        .unwrap();
        assert_eq!(
            py_json(&v, None),
            "{\"b\": 1, \"a\": [1.5, 2.0, \"x\\\"y\\n\", \"你好\"], \"c\": {}, \"d\": 1e-05}"
        );
        assert_eq!(
            py_json(&json!({"a": [1, 2]}), Some(4)),
            "{\n    \"a\": [\n        1,\n        2\n    ]\n}"
        );
    }

    #[test]
    fn default_tool_text_lists_args_and_names() {
        let tools = r#"[{"name": "weather", "description": "Get the weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}, "unit": {"type": "string", "description": "Unit", "enum": ["c", "f"]}},
            "required": ["city"]}}]"#;
        let text = tool_text(ToolFormat::Default, tools, "").unwrap();
        assert!(text.starts_with("You have access to the following tools:\n> Tool Name: weather\nTool Description: Get the weather\nTool Args:\n  - city (string, required): City name\n  - unit (string): Unit, should be one of [c, f]\n\nUse the following format if using a tool:\n"), "{text}");
        assert!(
            text.contains("Action: tool name (one of [weather])"),
            "{text}"
        );
        assert_eq!(tool_text(ToolFormat::Default, "[]", "").unwrap(), "");
    }

    #[test]
    fn function_calls_in_each_style() {
        let call = r#"{"name": "weather", "arguments": {"city": "Paris"}}"#;
        assert_eq!(
            function_text(ToolFormat::Default, call).unwrap(),
            "Action: weather\nAction Input: {\"city\": \"Paris\"}"
        );
        assert_eq!(
            function_text(ToolFormat::Llama3, call).unwrap(),
            "{\"name\": \"weather\", \"parameters\": {\"city\": \"Paris\"}}"
        );
        assert_eq!(function_text(ToolFormat::Qwen, call).unwrap(), "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>");
        assert!(function_text(ToolFormat::Default, "not json").is_err());
    }
}
