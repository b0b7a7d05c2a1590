//! Writing a dataset back out as JSON Lines (or a JSON array), in alpaca or sharegpt form, with
//! the `dataset_info.json` entry that loads it again — written atomically.
//!
//! Alpaca form: `{instruction, input: "", output, system?, history?}`, possible only when every turn
//! is a plain user/assistant exchange. Sharegpt form: `{conversations: [{from, value}], tools?}` with
//! LLaMA-Factory's default tags and the system prompt as a leading `system` message. `Auto` picks
//! alpaca when it can hold every example, sharegpt otherwise.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::dataset::Dataset;
use super::example::{Example, Role};
use super::registry::Formatting;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// The layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveForm {
    Auto,
    Alpaca,
    Sharegpt,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Saved {
    pub records: usize,
    pub formatting: Formatting,
    /// The `dataset_info.json` entry for the file (its `file_name` is the file name only).
    pub entry: Value,
}

fn alpaca_ok(e: &Example) -> bool {
    e.tools.is_empty()
        && e.messages.iter().enumerate().all(|(i, m)| {
            m.role
                == if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                }
        })
}

fn sharegpt_tag(role: Role) -> &'static str {
    match role {
        Role::User => "human",
        Role::Assistant => "gpt",
        Role::System => "system",
        Role::Function => "function_call",
        Role::Observation => "observation",
    }
}

fn alpaca_record(e: &Example) -> Value {
    let n = e.messages.len();
    let mut obj = Map::new();
    obj.insert("instruction".into(), json!(e.messages[n - 2].content));
    obj.insert("input".into(), json!(""));
    obj.insert("output".into(), json!(e.messages[n - 1].content));
    if !e.system.is_empty() {
        obj.insert("system".into(), json!(e.system));
    }
    if n > 2 {
        let pairs: Vec<Value> = e.messages[..n - 2]
            .chunks(2)
            .map(|p| json!([p[0].content, p[1].content]))
            .collect();
        obj.insert("history".into(), Value::Array(pairs));
    }
    Value::Object(obj)
}

fn sharegpt_record(e: &Example) -> Value {
    let mut conv = Vec::with_capacity(e.messages.len() + 1);
    if !e.system.is_empty() {
        conv.push(json!({"from": "system", "value": e.system}));
    }
    for m in &e.messages {
        conv.push(json!({"from": sharegpt_tag(m.role), "value": m.content}));
    }
    let mut obj = Map::new();
    obj.insert("conversations".into(), Value::Array(conv));
    if !e.tools.is_empty() {
        obj.insert("tools".into(), json!(e.tools));
    }
    Value::Object(obj)
}

/// Write `ds` to `path` (`.jsonl` → JSON Lines, `.json` → a JSON array).
pub fn save(ds: &Dataset, path: &Path, form: SaveForm) -> Result<Saved> {
    let lines = match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => true,
        Some("json") => false,
        _ => {
            return Err(Error::data(
                path,
                "file name",
                "save writes .jsonl (JSON Lines) or .json (a JSON array)",
            ))
        }
    };
    let all_alpaca = ds.iter().all(alpaca_ok);
    let formatting = match form {
        SaveForm::Alpaca if !all_alpaca => {
            let bad = ds.iter().position(|e| !alpaca_ok(e)).unwrap_or(0);
            return Err(Error::msg(format!(
                "example {bad} has tool calls or non user/assistant turns, which alpaca cannot hold; save as sharegpt"
            )));
        }
        SaveForm::Alpaca => Formatting::Alpaca,
        SaveForm::Sharegpt => Formatting::Sharegpt,
        SaveForm::Auto if all_alpaca => Formatting::Alpaca,
        SaveForm::Auto => Formatting::Sharegpt,
    };
    let records: Vec<Value> = ds
        .iter()
        .map(|e| match formatting {
            Formatting::Alpaca => alpaca_record(e),
            _ => sharegpt_record(e),
        })
        .collect();
    let mut out = String::new();
    if lines {
        for r in &records {
            out.push_str(&r.to_string());
            out.push('\n');
        }
    } else {
        out = serde_json::to_string_pretty(&records).map_err(|e| Error::msg(e.to_string()))?;
        out.push('\n');
    }
    write_atomic(path, out.as_bytes())?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entry = match formatting {
        Formatting::Alpaca => json!({
            "file_name": file_name,
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
        }),
        _ => json!({
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"}
        }),
    };
    Ok(Saved {
        records: records.len(),
        formatting,
        entry,
    })
}
