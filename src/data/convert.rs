//! Raw rows → normalized [`Example`]s, with LLaMA-Factory's converter rules.
//!
//! Facts (specs/llamafactory.md §1, `converter.py`):
//! - alpaca: the user turn is `instruction + "\n" + input` (either may be empty; both empty gives an
//!   empty turn, which is kept); `history` pairs come first; `system`/`tools` columns when mapped;
//!   a response that is not a string makes the record unusable for SFT.
//! - sharegpt: roles mapped through `tags`; a leading `system_tag` message becomes the system prompt;
//!   even positions must be user/observation, odd ones assistant/function; the count must be even.
//! - openai: like sharegpt on `role`/`content`, with `tool_calls` turned into a function turn and
//!   consecutive tool results merged into one observation.
//!
//! Where LLaMA-Factory crashes (a mapped column missing from a record: `KeyError`) or silently
//! drops a record, tunelab returns a [`Skip`] that says which field and why. That applies to the
//! content columns (prompt, response, messages); a record without an optional column (input,
//! system, tools, history) reads it as null, which is what Hugging Face hands LLaMA-Factory when
//! other records of the file have the key. Decided here:
//! `null` in a text column reads as empty (as Python's falsy test does), except for the response;
//! a `tools` value that is a JSON list/object is serialized to a string (as LLaMA-Factory's openai
//! converter does); LLaMA-Factory HEAD's Nemotron-only "detailed thinking off" system suffix in the
//! openai converter is *not* reproduced.

use std::fmt;

use serde_json::Value;

use super::example::{Example, Message, Role};
use super::readers::Row;
use super::registry::{Entry, Formatting, Tags};

/// Why a record was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The category counted in statistics ("missing column", "role order", ...).
    pub kind: &'static str,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl Skip {
    fn new(kind: &'static str, field: Option<&str>, message: impl Into<String>) -> Self {
        Skip {
            kind,
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field \"{field}\": {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The JSON type name of `v`, for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The value of a required mapped column (prompt, response, messages); missing is a skip.
fn column<'a>(row: &'a mut Row, name: &Option<String>) -> Result<Option<&'a mut Value>, Skip> {
    match name {
        None => Ok(None),
        Some(name) => row.get_mut(name).map(Some).ok_or_else(|| {
            Skip::new(
                "missing column",
                Some(name),
                "missing from the record (check \"columns\" in dataset_info.json)",
            )
        }),
    }
}

/// The value of an optional mapped column (input, system, tools, history): a record without the
/// key reads as null, as it does once Hugging Face has loaded the file into Arrow columns.
fn optional<'a>(row: &'a mut Row, name: &Option<String>) -> Option<&'a mut Value> {
    name.as_ref().and_then(|n| row.get_mut(n))
}

/// How text leaves a row: moved out (no copy, the usual case), or copied when the entry maps one
/// column to two roles.
#[derive(Clone, Copy)]
enum Grab {
    Move,
    Copy,
}

impl Grab {
    /// `Copy` when two text columns of `entry` name the same field.
    fn for_entry(entry: &Entry) -> Grab {
        let c = &entry.columns;
        let names = [
            &c.prompt,
            &c.query,
            &c.response,
            &c.system,
            &c.tools,
            &c.history,
            &c.messages,
        ];
        let named: Vec<&String> = names.iter().filter_map(|n| n.as_ref()).collect();
        let distinct = named
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if distinct == named.len() {
            Grab::Move
        } else {
            Grab::Copy
        }
    }

    fn string(self, s: &mut String) -> String {
        match self {
            Grab::Move => std::mem::take(s),
            Grab::Copy => s.clone(),
        }
    }
}

/// A required text column: string as is, null as "", missing a skip, anything else a skip.
fn text(row: &mut Row, name: &Option<String>, grab: Grab) -> Result<String, Skip> {
    text_value(column(row, name)?, name, grab)
}

/// An optional text column: string as is, null or missing as "".
fn optional_text(row: &mut Row, name: &Option<String>, grab: Grab) -> Result<String, Skip> {
    text_value(optional(row, name), name, grab)
}

fn text_value(
    value: Option<&mut Value>,
    name: &Option<String>,
    grab: Grab,
) -> Result<String, Skip> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(grab.string(s)),
        Some(other) => Err(wrong_type(name.as_deref(), "string", other)),
    }
}

fn wrong_type(field: Option<&str>, expected: &str, got: &Value) -> Skip {
    Skip::new(
        "wrong type",
        field,
        format!("expected {expected}, got {}", kind_of(got)),
    )
}

/// The tools column: a string, or a JSON list/object serialized to one.
fn tools(row: &mut Row, name: &Option<String>, grab: Grab) -> Result<String, Skip> {
    match optional(row, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(grab.string(s)),
        Some(v @ (Value::Array(_) | Value::Object(_))) => Ok(crate::data::tools::py_json(v, None)),
        Some(other) => Err(wrong_type(name.as_deref(), "a JSON string of tools", other)),
    }
}

/// Convert one raw row according to `entry`. The row's text is moved into the example (no
/// copy), so the row is left partly emptied.
pub fn convert(entry: &Entry, mut row: Row) -> Result<Example, Skip> {
    let grab = Grab::for_entry(entry);
    let row = &mut row;
    match entry.formatting {
        Formatting::Alpaca => alpaca(entry, row, grab),
        Formatting::Sharegpt => sharegpt(entry, row, grab),
        Formatting::Openai => openai(entry, row, grab),
    }
}

fn alpaca(entry: &Entry, row: &mut Row, grab: Grab) -> Result<Example, Skip> {
    let c = &entry.columns;
    let mut messages = Vec::with_capacity(2);
    if let Some(Value::Array(pairs)) = optional(row, &c.history) {
        for (i, pair) in pairs.iter_mut().enumerate() {
            let field = format!("{}[{i}]", c.history.as_deref().unwrap_or("history"));
            match pair.as_array_mut().map(|p| p.as_mut_slice()) {
                Some([Value::String(q), Value::String(a)]) => {
                    messages.push(Message::new(Role::User, grab.string(q)));
                    messages.push(Message::new(Role::Assistant, grab.string(a)));
                }
                _ => {
                    return Err(Skip::new(
                        "wrong type",
                        Some(&field),
                        "expected a [prompt, response] pair of strings",
                    ))
                }
            }
        }
    }
    let instruction = text(row, &c.prompt, grab)?;
    let input = optional_text(row, &c.query, grab)?;
    let user = match (instruction.is_empty(), input.is_empty()) {
        (false, false) => {
            let mut joined = instruction;
            joined.reserve_exact(1 + input.len());
            joined.push('\n');
            joined.push_str(&input);
            joined
        }
        (false, true) => instruction,
        (true, _) => input,
    };
    messages.push(Message::new(Role::User, user));
    let response = match column(row, &c.response)? {
        Some(Value::String(s)) => grab.string(s),
        Some(other) => return Err(wrong_type(c.response.as_deref(), "string", other)),
        None => {
            return Err(Skip::new("no response", None, "no response column mapped: sft needs an output column (pre-training text is not supported yet)"))
        }
    };
    messages.push(Message::new(Role::Assistant, response));
    messages.shrink_to_fit();
    Ok(Example {
        system: optional_text(row, &c.system, grab)?,
        tools: tools(row, &c.tools, grab)?,
        messages,
    })
}

/// The role a tag stands for, under `tags`.
fn role_of(tags: &Tags, tag: &str) -> Option<Role> {
    let is = |t: &Option<String>| t.as_deref() == Some(tag);
    if is(&tags.user_tag) {
        Some(Role::User)
    } else if is(&tags.assistant_tag) {
        Some(Role::Assistant)
    } else if is(&tags.observation_tag) {
        Some(Role::Observation)
    } else if is(&tags.function_tag) {
        Some(Role::Function)
    } else if is(&tags.system_tag) {
        Some(Role::System)
    } else {
        None
    }
}

/// One message of a sharegpt/openai record as written in the file.
struct RawMessage {
    /// The role tag (`human`, `gpt`, `user`, ...).
    tag: String,
    /// The content value (not yet checked to be a string).
    content: Value,
    /// OpenAI's `tool_calls`, when present.
    tool_calls: Option<Value>,
}

/// Converted messages with, for each, the tag it had and its position in the file.
#[derive(Default)]
struct Aligned {
    messages: Vec<Message>,
    tags: Vec<String>,
    positions: Vec<usize>,
}

impl Aligned {
    fn push(&mut self, role: Role, content: String, tag: String, position: usize) {
        self.messages.push(Message::new(role, content));
        self.tags.push(tag);
        self.positions.push(position);
    }
}

/// The messages column of a sharegpt/openai record: `(column name, messages)`.
fn raw_messages(entry: &Entry, row: &mut Row) -> Result<(String, Vec<RawMessage>), Skip> {
    let field = entry.columns.messages.clone().ok_or_else(|| {
        Skip::new(
            "missing column",
            None,
            "no messages column mapped (set columns.messages in dataset_info.json)",
        )
    })?;
    let list = match column(row, &entry.columns.messages)? {
        Some(Value::Array(list)) => std::mem::take(list),
        Some(other) => return Err(wrong_type(Some(&field), "a list of messages", other)),
        None => unreachable!("a mapped column is present or a skip"),
    };
    let role_tag = entry.tags.role_tag.as_deref().unwrap_or("from");
    let content_tag = entry.tags.content_tag.as_deref().unwrap_or("value");
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::Object(mut obj) = m else {
            return Err(wrong_type(Some(&at), "an object", &m));
        };
        let role = match obj.remove(role_tag) {
            Some(Value::String(r)) => r,
            Some(other) => {
                return Err(wrong_type(
                    Some(&format!("{at}.{role_tag}")),
                    "string",
                    &other,
                ))
            }
            None => {
                return Err(Skip::new(
                    "missing column",
                    Some(&at),
                    format!("no \"{role_tag}\" key (check tags.role_tag)"),
                ))
            }
        };
        out.push(RawMessage {
            tag: role,
            content: obj.remove(content_tag).unwrap_or(Value::Null),
            tool_calls: obj.remove("tool_calls"),
        });
    }
    Ok((field, out))
}

fn content_text(field: &str, i: usize, tag: &str, v: Value) -> Result<String, Skip> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(
            Some(&format!("{field}[{i}].{tag}")),
            "string",
            &other,
        )),
    }
}

/// The skip for a turn whose role does not fit: aligned turn `k` (even = user side) had `tag`,
/// found at `position` in the file's message list.
fn role_order_skip(k: usize, tag: &str, position: usize) -> Skip {
    let expected = if k.is_multiple_of(2) {
        "a user turn"
    } else {
        "an assistant turn"
    };
    Skip::new(
        "role order",
        None,
        format!("role \"{tag}\" at position {position}, expected {expected}"),
    )
}

/// Check alternation and count of the aligned messages.
fn check_order(aligned: &Aligned) -> Result<(), Skip> {
    let messages = &aligned.messages;
    for (k, m) in messages.iter().enumerate() {
        let ok = if k % 2 == 0 {
            m.role.is_prompt_side()
        } else {
            m.role.is_response_side()
        };
        if !ok {
            return Err(role_order_skip(k, &aligned.tags[k], aligned.positions[k]));
        }
    }
    if messages.is_empty() {
        return Err(Skip::new(
            "message count",
            None,
            "no messages besides the system prompt",
        ));
    }
    if !messages.len().is_multiple_of(2) {
        return Err(Skip::new(
            "message count",
            None,
            format!(
                "{} messages: a conversation must end with an assistant turn (an even count)",
                messages.len()
            ),
        ));
    }
    Ok(())
}

fn sharegpt(entry: &Entry, row: &mut Row, grab: Grab) -> Result<Example, Skip> {
    let (field, raw) = raw_messages(entry, row)?;
    let content_tag = entry.tags.content_tag.as_deref().unwrap_or("value");
    let mut raw = raw.into_iter().enumerate().peekable();
    let system = match raw
        .next_if(|(_, first)| entry.tags.system_tag.as_deref() == Some(first.tag.as_str()))
    {
        Some((_, first)) => content_text(&field, 0, content_tag, first.content)?,
        None => optional_text(row, &entry.columns.system, grab)?,
    };
    let mut aligned = Aligned::default();
    for (i, m) in raw {
        let k = aligned.messages.len();
        let accepted = if k % 2 == 0 {
            [&entry.tags.user_tag, &entry.tags.observation_tag]
        } else {
            [&entry.tags.assistant_tag, &entry.tags.function_tag]
        };
        if !accepted
            .iter()
            .any(|t| t.as_deref() == Some(m.tag.as_str()))
        {
            return Err(role_order_skip(k, &m.tag, i));
        }
        let role = role_of(&entry.tags, &m.tag).expect("an accepted tag maps to a role");
        aligned.push(
            role,
            content_text(&field, i, content_tag, m.content)?,
            m.tag,
            i,
        );
    }
    check_order(&aligned)?;
    aligned.messages.shrink_to_fit();
    Ok(Example {
        system,
        tools: tools(row, &entry.columns.tools, grab)?,
        messages: aligned.messages,
    })
}

fn openai(entry: &Entry, row: &mut Row, grab: Grab) -> Result<Example, Skip> {
    let (field, raw) = raw_messages(entry, row)?;
    let tags = &entry.tags;
    let content_tag = tags.content_tag.as_deref().unwrap_or("content");
    let is = |tag: &Option<String>, value: &str| tag.as_deref() == Some(value);
    let mut raw = raw.into_iter().enumerate().peekable();
    let system = match raw.next_if(|(_, first)| is(&tags.system_tag, &first.tag)) {
        Some((_, first)) => content_text(&field, 0, content_tag, first.content)?,
        None => optional_text(row, &entry.columns.system, grab)?,
    };
    let mut aligned = Aligned::default();
    // Consecutive tool results become one observation turn, at the first one's position.
    let mut tool_results: Vec<String> = Vec::new();
    let mut tool_start = 0;
    let observation_tag = tags.observation_tag.clone().unwrap_or_default();
    let separator = "\n</tool_response>\n<tool_response>\n";
    for (i, m) in raw {
        let mut tag = m.tag;
        let mut body = match m.content {
            Value::Null => String::new(),
            other => content_text(&field, i, content_tag, other)?,
        };
        if is(&tags.assistant_tag, &tag) || is(&tags.function_tag, &tag) {
            if let Some(Value::Array(calls)) = m
                .tool_calls
                .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
            {
                let functions: Vec<Value> = calls
                    .into_iter()
                    .map(|mut c| {
                        c.get_mut("function")
                            .map(Value::take)
                            .unwrap_or(Value::Null)
                    })
                    .collect();
                body = crate::data::tools::py_json(&Value::Array(functions), None);
                tag = tags
                    .function_tag
                    .clone()
                    .unwrap_or_else(|| "function".into());
            }
        }
        if is(&tags.observation_tag, &tag) {
            if tool_results.is_empty() {
                tool_start = i;
            }
            tool_results.push(body);
            continue;
        }
        if !tool_results.is_empty() {
            aligned.push(
                Role::Observation,
                tool_results.join(separator),
                observation_tag.clone(),
                tool_start,
            );
            tool_results.clear();
        }
        let role = role_of(tags, &tag).ok_or_else(|| {
            Skip::new(
                "role order",
                None,
                format!("unknown role \"{tag}\" at position {i} (check tags in dataset_info.json)"),
            )
        })?;
        aligned.push(role, body, tag, i);
    }
    if !tool_results.is_empty() {
        aligned.push(
            Role::Observation,
            tool_results.join(separator),
            observation_tag,
            tool_start,
        );
    }
    check_order(&aligned)?;
    aligned.messages.shrink_to_fit();
    Ok(Example {
        system,
        tools: tools(row, &entry.columns.tools, grab)?,
        messages: aligned.messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::registry::{Columns, Source};
    use serde_json::json;

    fn entry(formatting: Formatting) -> Entry {
        Entry::for_path(std::path::Path::new("x.json"), formatting)
    }

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn alpaca_joins_instruction_and_input_and_keeps_history() {
        let e = entry(Formatting::Alpaca);
        let ex = convert(
            &e,
            row(json!({"instruction": "Translate", "input": "hola", "output": "hello"})),
        )
        .unwrap();
        assert_eq!(ex.messages[0].content, "Translate\nhola");
        let ex = convert(
            &e,
            row(json!({"instruction": "", "input": "only input", "output": "x"})),
        )
        .unwrap();
        assert_eq!(ex.messages[0].content, "only input");
        let ex = convert(
            &e,
            row(json!({"instruction": "", "input": "", "output": "x"})),
        )
        .unwrap();
        assert_eq!(ex.messages[0].content, "");
        let mut h = e.clone();
        h.columns.history = Some("history".into());
        h.columns.system = Some("system".into());
        let ex = convert(
            &h,
            row(
                json!({"instruction": "q2", "input": "", "output": "a2", "system": "be brief",
                                         "history": [["q1", "a1"]]}),
            ),
        )
        .unwrap();
        let roles: Vec<_> = ex.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(roles, ["q1", "a1", "q2", "a2"]);
        assert_eq!(ex.system, "be brief");
    }

    #[test]
    fn alpaca_bad_records_are_skips_with_reasons() {
        let e = entry(Formatting::Alpaca);
        let s = convert(&e, row(json!({"instruction": "q", "input": ""}))).unwrap_err();
        assert_eq!(
            s.to_string(),
            "field \"output\": missing from the record (check \"columns\" in dataset_info.json)"
        );
        let s = convert(
            &e,
            row(json!({"instruction": "q", "input": "", "output": null})),
        )
        .unwrap_err();
        assert_eq!(s.to_string(), "field \"output\": expected string, got null");
        let s = convert(
            &e,
            row(json!({"instruction": 5, "input": "", "output": "a"})),
        )
        .unwrap_err();
        assert_eq!(s.kind, "wrong type");
    }

    fn sharegpt_entry() -> Entry {
        let mut e = entry(Formatting::Sharegpt);
        e.columns = Columns {
            messages: Some("conversations".into()),
            tools: Some("tools".into()),
            ..Default::default()
        };
        e
    }

    #[test]
    fn sharegpt_tool_conversation_with_system_converts() {
        let r = row(json!({"conversations": [
            {"from": "system", "value": "sys"}, {"from": "human", "value": "q"},
            {"from": "function_call", "value": "{}"}, {"from": "observation", "value": "r"},
            {"from": "gpt", "value": "a"}], "tools": [{"name": "w"}]}));
        let ex = convert(&sharegpt_entry(), r).unwrap();
        let roles: Vec<Role> = ex.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Function,
                Role::Observation,
                Role::Assistant
            ]
        );
        assert_eq!(ex.system, "sys");
        assert_eq!(ex.tools, "[{\"name\": \"w\"}]");
        assert!(matches!(sharegpt_entry().source, Source::File(_)));
    }

    #[test]
    fn sharegpt_role_order_and_count_are_validated() {
        let e = sharegpt_entry();
        let odd = row(json!({"conversations": [
            {"from": "system", "value": "sys"}, {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"}, {"from": "human", "value": "thanks"}], "tools": ""}));
        let s = convert(&e, odd).unwrap_err();
        assert_eq!(
            s.to_string(),
            "3 messages: a conversation must end with an assistant turn (an even count)"
        );
        assert_eq!(s.kind, "message count");
        let bad = row(
            json!({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}], "tools": ""}),
        );
        let s = convert(&e, bad).unwrap_err();
        assert_eq!(
            s.to_string(),
            "role \"gpt\" at position 0, expected a user turn"
        );
        assert_eq!(s.kind, "role order");
        let missing = row(json!({"tools": ""}));
        assert_eq!(convert(&e, missing).unwrap_err().kind, "missing column");
    }

    #[test]
    fn openai_merges_tool_results_and_converts_tool_calls() {
        let e = entry(Formatting::Openai);
        let r = row(json!({"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "weather in A and B?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"function": {"name": "w", "arguments": "{\"c\":\"A\"}"}},
                {"function": {"name": "w", "arguments": "{\"c\":\"B\"}"}}]},
            {"role": "tool", "content": "sunny"},
            {"role": "tool", "content": "rain"},
            {"role": "assistant", "content": "A sunny, B rain."}]}));
        let ex = convert(&e, r.clone()).unwrap();
        assert_eq!(ex.system, "sys");
        assert_eq!(ex.messages[1].role, Role::Function);
        assert!(
            ex.messages[1]
                .content
                .starts_with("[{\"name\": \"w\", \"arguments\": "),
            "{}",
            ex.messages[1].content
        );
        assert_eq!(
            ex.messages[2].content,
            "sunny\n</tool_response>\n<tool_response>\nrain"
        );
        assert_eq!(ex.messages.len(), 4);
    }
}
