//! Reading requests: the JSON of `/v1/chat/completions` and `/v1/completions` into what the
//! engine needs, checking every field's type and range. A field tunelab cannot honour (`n` > 1,
//! `tools`, a `response_format` other than text, `logit_bias`, ...) is refused with a 400 that
//! names it — never silently ignored. Fields no OpenAI server defines are ignored, as vLLM does.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use crate::data::readers::json::kind_name as kind;
use crate::data::{Message, Role};
use crate::generate::sampling::SamplingOptions;

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A conversation, written with the model's chat template.
    Chat {
        system: String,
        messages: Vec<Message>,
    },
    /// Raw text, continued as it is.
    Text(String),
    /// Token ids, continued as they are.
    Tokens(Vec<u32>),
}

/// A parsed generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The base model's or an adapter's name.
    pub model: String,
    pub prompt: Prompt,
    /// None: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingOptions,
    /// Whether `seed` was given (otherwise sampling draws a fresh one).
    pub seed_given: bool,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities of each generated token and this many alternatives (None: off).
    pub logprobs: Option<usize>,
    /// Keep generating past end tokens (vLLM's and llama.cpp's `ignore_eos`, for benchmarks).
    pub ignore_eos: bool,
}

/// The body as a JSON object.
pub fn object(body: &[u8]) -> ApiResult<Map<String, Value>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(
            None,
            format!(
                "the request body is not valid UTF-8 (byte {}): send JSON text",
                e.valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            None,
            "the request body is empty: send a JSON object",
        ));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid(
            None,
            format!(
                "the request body must be a JSON object, got {}",
                kind(&other)
            ),
        )),
        Err(e) => Err(ApiError::invalid(
            None,
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

/// Typed access to a request object's fields; a missing field and `null` both read as None.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn string(&self, name: &str) -> ApiResult<Option<&str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::field(
                name,
                format!("'{name}' must be a string, got {}", kind(v)),
            )),
        }
    }

    pub fn bool(&self, name: &str) -> ApiResult<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::field(
                name,
                format!("'{name}' must be true or false, got {}", kind(v)),
            )),
        }
    }

    /// A number in `lo..=hi`.
    pub fn number(&self, name: &str, lo: f64, hi: f64) -> ApiResult<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::field(
                    name,
                    format!("'{name}' must be between {lo} and {hi}, got {n}"),
                )),
            },
            Some(v) => Err(ApiError::field(
                name,
                format!("'{name}' must be a number, got {}", kind(v)),
            )),
        }
    }

    /// A whole number in `lo..=hi`.
    pub fn integer(&self, name: &str, lo: i64, hi: i64) -> ApiResult<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::field(
                    name,
                    format!("'{name}' must be a whole number between {lo} and {hi}, got {n}"),
                )),
            },
            Some(v) => Err(ApiError::field(
                name,
                format!("'{name}' must be a whole number, got {}", kind(v)),
            )),
        }
    }

    fn present(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Refuse the OpenAI fields tunelab cannot honour.
fn refuse_unsupported(f: &Fields) -> ApiResult<()> {
    if let Some(n) = f.integer("n", i64::MIN, i64::MAX)? {
        if n != 1 {
            return Err(ApiError::field("n", format!("'n' = {n}: tunelab returns one choice per request; send n = 1 (or leave it out) and make several requests")));
        }
    }
    if let Some(best) = f.integer("best_of", i64::MIN, i64::MAX)? {
        if best != 1 {
            return Err(ApiError::field(
                "best_of",
                "'best_of' other than 1 is not supported",
            ));
        }
    }
    let nonempty = |name: &str| match f.get(name) {
        None => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    };
    for name in ["tools", "functions"] {
        if nonempty(name) {
            return Err(ApiError::field(
                name,
                format!(
                    "'{name}': tool calls are not supported yet; send the request without tools"
                ),
            ));
        }
    }
    for name in ["tool_choice", "function_call"] {
        match f.get(name) {
            None => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => {
                return Err(ApiError::field(
                    name,
                    format!("'{name}': tool calls are not supported yet"),
                ))
            }
        }
    }
    if nonempty("logit_bias") {
        return Err(ApiError::field(
            "logit_bias",
            "'logit_bias' is not supported; leave it out",
        ));
    }
    if let Some(format) = f.get("response_format") {
        let ty = format.get("type").and_then(Value::as_str);
        if ty != Some("text") {
            return Err(ApiError::field("response_format", "'response_format': only {\"type\": \"text\"} is supported; JSON mode and JSON schemas are not enforced by tunelab, so they are refused rather than ignored"));
        }
    }
    for name in ["audio", "prediction", "web_search_options"] {
        if f.present(name) {
            return Err(ApiError::field(name, format!("'{name}' is not supported")));
        }
    }
    if let Some(m) = f.get("modalities") {
        if m != &serde_json::json!(["text"]) {
            return Err(ApiError::field(
                "modalities",
                "'modalities': only [\"text\"] is supported",
            ));
        }
    }
    Ok(())
}

/// The fields both endpoints share, read into `req`.
fn common(f: &Fields, prompt: Prompt, max_logprobs: i64, chat: bool) -> ApiResult<Request> {
    refuse_unsupported(f)?;
    let model = f.string("model")?.unwrap_or("").to_string();
    let max_tokens = match f.integer("max_completion_tokens", 1, u32::MAX as i64)? {
        Some(n) => Some(n),
        None => f.integer("max_tokens", 1, u32::MAX as i64)?,
    };
    let d = SamplingOptions::default();
    let seed = f.integer("seed", i64::MIN, i64::MAX)?;
    let top_k = f.integer("top_k", -1, u32::MAX as i64)?.unwrap_or(0).max(0) as usize;
    let sampling = SamplingOptions {
        // OpenAI's default temperature is 1.
        temperature: f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0),
        top_p: f.number("top_p", 0.0, 1.0)?.unwrap_or(d.top_p),
        top_k,
        min_p: f.number("min_p", 0.0, 1.0)?.unwrap_or(d.min_p),
        repetition_penalty: f
            .number("repetition_penalty", 0.01, 100.0)?
            .unwrap_or(d.repetition_penalty),
        presence_penalty: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        seed: seed.map_or(0, |s| s as u64),
    };
    if sampling.top_p == 0.0 {
        return Err(ApiError::field("top_p", "'top_p' must be greater than 0"));
    }
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > 16 {
                return Err(ApiError::field(
                    "stop",
                    format!("'stop' has {} strings; at most 16 are allowed", items.len()),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ApiError::field(
                        "stop",
                        format!("'stop[{i}]' must be a string, got {}", kind(other)),
                    )),
                })
                .collect::<ApiResult<Vec<_>>>()?
        }
        Some(v) => {
            return Err(ApiError::field(
                "stop",
                format!(
                    "'stop' must be a string or an array of strings, got {}",
                    kind(v)
                ),
            ))
        }
    };
    // An empty stop string would match at once.
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::field(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true",
                ));
            }
            Fields(o)
                .bool("include_usage")
                .map_err(|e| ApiError {
                    param: Some("stream_options.include_usage".into()),
                    ..e
                })?
                .unwrap_or(false)
        }
        Some(v) => {
            return Err(ApiError::field(
                "stream_options",
                format!("'stream_options' must be an object, got {}", kind(v)),
            ))
        }
    };
    let logprobs = if chat {
        let on = f.bool("logprobs")?.unwrap_or(false);
        let top = f.integer("top_logprobs", 0, max_logprobs)?;
        match (on, top) {
            (false, Some(_)) => {
                return Err(ApiError::field(
                    "top_logprobs",
                    "'top_logprobs' needs 'logprobs': true",
                ))
            }
            (true, top) => Some(top.unwrap_or(0) as usize),
            (false, None) => None,
        }
    } else {
        f.integer("logprobs", 0, max_logprobs)?.map(|n| n as usize)
    };
    Ok(Request {
        model,
        prompt,
        max_tokens: max_tokens.map(|n| n as usize),
        sampling,
        seed_given: seed.is_some(),
        stop,
        stream,
        include_usage,
        logprobs,
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
    })
}

/// A `/v1/chat/completions` body.
pub fn chat(body: &[u8]) -> ApiResult<Request> {
    let map = object(body)?;
    let f = Fields(&map);
    let (system, messages) = messages(map.get("messages"))?;
    common(&f, Prompt::Chat { system, messages }, 20, true)
}

/// A `/v1/completions` body.
pub fn completion(body: &[u8]) -> ApiResult<Request> {
    let map = object(body)?;
    let f = Fields(&map);
    if f.bool("echo")?.unwrap_or(false) {
        return Err(ApiError::field(
            "echo",
            "'echo' is not supported; leave it out",
        ));
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::field(
            "suffix",
            "'suffix' (fill in the middle) is not supported",
        ));
    }
    let prompt = completion_prompt(map.get("prompt"))?;
    common(&f, prompt, 5, false)
}

/// `prompt`: a string, a list of one string, or a list of token ids.
fn completion_prompt(v: Option<&Value>) -> ApiResult<Prompt> {
    let one_prompt = "send one prompt per request (a string or a list of token ids)";
    match v {
        None | Some(Value::Null) => Err(ApiError::field(
            "prompt",
            "'prompt' is required: the text to continue",
        )),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(ApiError::field("prompt", "'prompt' is an empty list"))
        }
        Some(Value::Array(items)) => match &items[0] {
            Value::String(s) if items.len() == 1 => Ok(Prompt::Text(s.clone())),
            Value::String(_) => Err(ApiError::field(
                "prompt",
                format!("'prompt' has {} strings: {one_prompt}", items.len()),
            )),
            Value::Number(_) => token_ids(items).map(Prompt::Tokens).map_err(|(i, t)| {
                ApiError::field(
                    "prompt",
                    format!("'prompt[{i}]' must be a token id (a whole number ≥ 0), got {t}"),
                )
            }),
            Value::Array(_) => Err(ApiError::field(
                "prompt",
                format!("'prompt' is a list of prompts: {one_prompt}"),
            )),
            other => Err(ApiError::field(
                "prompt",
                format!(
                    "'prompt[0]' must be a string or a token id, got {}",
                    kind(other)
                ),
            )),
        },
        Some(other) => Err(ApiError::field(
            "prompt",
            format!(
                "'prompt' must be a string or a list of token ids, got {}",
                kind(other)
            ),
        )),
    }
}

/// A list of token ids; Err((index, value)) at the first item that is not one.
pub fn token_ids(items: &[Value]) -> Result<Vec<u32>, (usize, &Value)> {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_u64()
                .filter(|&t| t <= u32::MAX as u64)
                .map(|t| t as u32)
                .ok_or((i, t))
        })
        .collect()
}

/// `messages`: (system prompt, the rest). System (or developer) messages may only come first;
/// `content` is a string or a list of text parts.
pub fn messages(v: Option<&Value>) -> ApiResult<(String, Vec<Message>)> {
    let items = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::field(
                "messages",
                "'messages' is required: a non-empty array of {role, content}",
            ))
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::field(
                "messages",
                "'messages' must be a non-empty array",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::field(
                "messages",
                format!("'messages' must be an array, got {}", kind(other)),
            ))
        }
    };
    let mut system: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(m) = item else {
            return Err(ApiError::field(
                &param,
                format!(
                    "'{param}' must be an object {{role, content}}, got {}",
                    kind(item)
                ),
            ));
        };
        let f = Fields(m);
        let role = f
            .string("role")
            .map_err(|_| ApiError::field(&param, format!("'{param}.role' must be a string")))?
            .ok_or_else(|| ApiError::field(&param, format!("'{param}.role' is missing")))?;
        let content = content(m.get("content"), &param)?;
        match role {
            "system" | "developer" if out.is_empty() => system.push(content),
            "system" | "developer" => {
                return Err(ApiError::field(&param, format!("'{param}': a {role} message may only come before the conversation")))
            }
            "user" => out.push(Message::new(Role::User, content)),
            "assistant" => out.push(Message::new(Role::Assistant, content)),
            "tool" => out.push(Message::new(Role::Observation, content)),
            other => {
                return Err(ApiError::field(&param, format!("'{param}.role' is \"{other}\"; expected system, developer, user, assistant or tool")))
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::field(
            "messages",
            "'messages' has only system messages: add a user message",
        ));
    }
    Ok((system.join("\n"), out))
}

/// A message's `content`: a string, or a list of `{type: "text", text}` parts joined.
fn content(v: Option<&Value>, param: &str) -> ApiResult<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(ApiError::field(
            param,
            format!("'{param}.content' is missing"),
        )),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(ty), _) if ty != "text" => {
                        return Err(ApiError::field(param, format!("'{param}.content[{j}]' is a {ty} part; only text parts are supported")))
                    }
                    _ => return Err(ApiError::field(param, format!("'{param}.content[{j}]' must be {{\"type\": \"text\", \"text\": string}}"))),
                }
            }
            Ok(text)
        }
        Some(other) => Err(ApiError::field(
            param,
            format!(
                "'{param}.content' must be a string or a list of text parts, got {}",
                kind(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str, chat_endpoint: bool) -> ApiError {
        let r = if chat_endpoint {
            chat(body.as_bytes())
        } else {
            completion(body.as_bytes())
        };
        r.unwrap_err()
    }

    #[test]
    fn a_full_chat_request_reads() {
        let r = chat(br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],
            "max_tokens":5,"temperature":0,"top_k":-1,"stop":"\n","stream":true,"stream_options":{"include_usage":true},"seed":3,
            "logprobs":true,"top_logprobs":2,"presence_penalty":0.5,"n":1,"tool_choice":"none","response_format":{"type":"text"}}"#).unwrap();
        assert_eq!(
            r.prompt,
            Prompt::Chat {
                system: "be brief".into(),
                messages: vec![Message::new(Role::User, "hi")]
            }
        );
        assert_eq!(
            (r.max_tokens, r.sampling.temperature, r.sampling.top_k),
            (Some(5), 0.0, 0)
        );
        assert_eq!(
            (r.stop, r.stream, r.include_usage, r.logprobs),
            (vec!["\n".to_string()], true, true, Some(2))
        );
        assert_eq!(
            (r.sampling.seed, r.seed_given, r.sampling.presence_penalty),
            (3, true, 0.5)
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let m = r#""model":"m","messages":[{"role":"user","content":"hi"}]"#;
        for (extra, param) in [
            (r#""n":2"#, "n"),
            (r#""tools":[{"type":"function"}]"#, "tools"),
            (
                r#""response_format":{"type":"json_object"}"#,
                "response_format",
            ),
            (r#""logit_bias":{"5":10}"#, "logit_bias"),
            (r#""temperature":3"#, "temperature"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""max_tokens":1e300"#, "max_tokens"),
            (r#""stop":[1]"#, "stop"),
            (
                r#""stream_options":{"include_usage":true}"#,
                "stream_options",
            ),
            (r#""top_logprobs":2"#, "top_logprobs"),
        ] {
            let e = err(&format!("{{{m},{extra}}}"), true);
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, Some(param)),
                "{extra}: {e:?}"
            );
        }
        for (body, param) in [
            (r#"{"messages":[]}"#, Some("messages")),
            (r#"{"messages":"hi"}"#, Some("messages")),
            (r#"{"messages":[123]}"#, Some("messages[0]")),
            (r#"{"messages":[{}]}"#, Some("messages[0]")),
            (
                r#"{"messages":[{"role":123,"content":"x"}]}"#,
                Some("messages[0]"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"a"},{"role":"system","content":"b"}]}"#,
                Some("messages[1]"),
            ),
            (
                r#"{"messages":[{"role":"system","content":"b"}]}"#,
                Some("messages"),
            ),
            ("[1,2]", None),
            ("{", None),
            ("", None),
        ] {
            let e = err(body, true);
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, param),
                "{body}: {e:?}"
            );
        }
        assert!(chat(b"{\"messages\":\"\xff\"}")
            .unwrap_err()
            .message
            .contains("UTF-8"));
    }

    #[test]
    fn completion_prompts() {
        let r = completion(br#"{"prompt":[1,2,3],"logprobs":2}"#).unwrap();
        assert_eq!(
            (r.prompt, r.logprobs),
            (Prompt::Tokens(vec![1, 2, 3]), Some(2))
        );
        assert_eq!(
            completion(br#"{"prompt":["a"]}"#).unwrap().prompt,
            Prompt::Text("a".into())
        );
        for body in [
            r#"{"prompt":["a","b"]}"#,
            r#"{"prompt":[-1]}"#,
            r#"{"prompt":{}}"#,
            r#"{}"#,
            r#"{"prompt":"a","echo":true}"#,
        ] {
            assert_eq!(err(body, false).status.as_u16(), 400, "{body}");
        }
    }
}
