//! The JSON answers, shaped as OpenAI's: a whole `chat.completion` / `text_completion`, or the
//! chunks of a stream — one `id`, `created` and `model` in every chunk, `role` only in the first
//! delta, a closing `delta: {}` chunk carrying `finish_reason`, and a `choices: []` usage chunk
//! only when asked for. Non-streamed answers always carry `usage`, and llama.cpp's `timings`.

use serde_json::{json, Value};

use super::engine::{Finish, TokenLogprob};

/// What every chunk of one answer shares.
pub struct Shape {
    /// Chat (`chat.completion`, `message`/`delta`) or completion (`text_completion`, `text`).
    pub chat: bool,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Shape {
    /// A fresh answer's shape: `chatcmpl-…` or `cmpl-…` with a random id.
    pub fn new(chat: bool, model: &str) -> Shape {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let random = crate::rng::Rng::new(created.as_nanos() as u64 ^ next_serial()).next_u64();
        Shape {
            chat,
            id: format!("{}-{random:016x}", if chat { "chatcmpl" } else { "cmpl" }),
            created: created.as_secs(),
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
        })
    }

    /// The one choice of a chunk (`whole`: of a whole answer), with `body` under chat's
    /// `delta` (`message` when whole) or completions' `text`.
    fn choice(&self, whole: bool, body: Value, logprobs: Value, finish: Option<&str>) -> Value {
        let mut c = json!({"index": 0, "logprobs": logprobs, "finish_reason": finish});
        let key = match (self.chat, whole) {
            (true, false) => "delta",
            (true, true) => "message",
            (false, _) => "text",
        };
        c[key] = body;
        json!([c])
    }

    /// The opening chunk of a chat stream (`role` and empty content); None for completions.
    pub fn first_chunk(&self) -> Option<Value> {
        self.chat.then(|| {
            self.envelope(
                true,
                self.choice(
                    false,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    None,
                ),
            )
        })
    }

    /// A chunk of new text with the log-probabilities of its tokens (`offset`: the completion
    /// text's length so far, for legacy `text_offset`s).
    pub fn text_chunk(
        &self,
        text: &str,
        logprobs: Option<&[TokenLogprob]>,
        offset: &mut usize,
    ) -> Value {
        let body = if self.chat {
            json!({"content": text})
        } else {
            json!(text)
        };
        let lp = self.logprobs(logprobs, offset);
        self.envelope(true, self.choice(false, body, lp, None))
    }

    /// The closing chunk: an empty delta (or text) with the finish reason.
    pub fn final_chunk(&self, finish: &Finish) -> Value {
        let body = if self.chat { json!({}) } else { json!("") };
        self.envelope(
            true,
            self.choice(false, body, Value::Null, Some(finish.reason)),
        )
    }

    /// The usage chunk (`choices: []`), sent when `stream_options.include_usage` is true.
    pub fn usage_chunk(&self, finish: &Finish) -> Value {
        let mut v = self.envelope(true, json!([]));
        v["usage"] = usage(finish);
        v
    }

    /// A whole answer.
    pub fn full(&self, text: &str, logprobs: Option<&[TokenLogprob]>, finish: &Finish) -> Value {
        let body = if self.chat {
            json!({"role": "assistant", "content": text})
        } else {
            json!(text)
        };
        let mut offset = 0;
        let lp = self.logprobs(logprobs, &mut offset);
        let choices = self.choice(true, body, lp, Some(finish.reason));
        let mut v = self.envelope(false, choices);
        v["usage"] = usage(finish);
        v["timings"] = timings(finish);
        v
    }

    fn logprobs(&self, entries: Option<&[TokenLogprob]>, offset: &mut usize) -> Value {
        match entries {
            None => Value::Null,
            Some(e) if self.chat => chat_logprobs(e),
            Some(e) => legacy_logprobs(e, offset),
        }
    }
}

/// `tunelab-VERSION`.
fn fingerprint() -> String {
    format!("tunelab-{}", env!("CARGO_PKG_VERSION"))
}

/// A per-process counter mixed into ids, so two answers in one nanosecond still differ.
fn next_serial() -> u64 {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// OpenAI's `usage`.
pub fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// llama.cpp's `timings`.
pub fn timings(f: &Finish) -> Value {
    let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let per_token = |n: usize, ms: f64| if n > 0 { ms / n as f64 } else { 0.0 };
    json!({
        "prompt_n": f.prompt_tokens,
        "prompt_ms": f.prompt_ms,
        "prompt_per_token_ms": per_token(f.prompt_tokens, f.prompt_ms),
        "prompt_per_second": per_second(f.prompt_tokens, f.prompt_ms),
        "predicted_n": f.completion_tokens,
        "predicted_ms": f.predicted_ms,
        "predicted_per_token_ms": per_token(f.completion_tokens, f.predicted_ms),
        "predicted_per_second": per_second(f.completion_tokens, f.predicted_ms),
    })
}

/// Chat's `logprobs: {content: [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(entries: &[TokenLogprob]) -> Value {
    let one = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    json!({"content": entries.iter().map(|e| {
        let mut v = one(&e.token, e.logprob);
        v["top_logprobs"] = e.top.iter().map(|(t, l)| one(t, *l)).collect();
        v
    }).collect::<Vec<_>>()})
}

/// Completions' legacy `logprobs: {tokens, token_logprobs, top_logprobs, text_offset}`.
fn legacy_logprobs(entries: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut offsets = Vec::with_capacity(entries.len());
    for e in entries {
        offsets.push(*offset);
        *offset += e.token.len();
    }
    json!({
        "tokens": entries.iter().map(|e| e.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|e| {
            e.top.iter().map(|(t, l)| (t.clone(), json!(l))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}
