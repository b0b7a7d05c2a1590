//! A Hugging Face byte-level BPE tokenizer (`tokenizer.json`: Llama 3, Qwen2, SmolLM2, GPT-2,
//! tunelab's `tiny`) as GGUF `tokenizer.*` keys, as llama.cpp's `convert_hf_to_gguf.py` writes
//! them (specs/llamacpp.md §4): `tokenizer.ggml.model = "gpt2"`, the tokens by id (ids the
//! vocabulary lacks up to the model's vocab size become `[PAD<id>]`, type UNUSED), their types
//! (added special tokens CONTROL, other added tokens USER_DEFINED, the rest NORMAL), the merges
//! as `"a b"` strings, bos/eos ids, `add_bos_token`, and the chat template.
//!
//! `tokenizer.ggml.pre` names the pre-tokenizer regex llama.cpp applies before BPE; the
//! converter recognises it by hashing a test tokenization. tunelab recognises it by the
//! pre-tokenizer's structure: a lone GPT-2 `ByteLevel` (regex on) → "gpt-2"; single `Digits`
//! then `ByteLevel` (SmolLM2's tokenizer.json) → "smollm"; a `Split` on
//! Llama 3's pattern → "llama-bpe"; anything else is refused rather than written wrong.

use super::types::Value;
use crate::error::{Error, Result};
use crate::model::Model;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNUSED: i32 = 5;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The start of Llama 3's pre-tokenizer pattern (the contractions, case-insensitive).
const LLAMA3_PATTERN_START: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";

/// The `tokenizer.ggml.pre` name of a `tokenizer.json` pre_tokenizer, if tunelab knows it.
fn pre_name(pre: &serde_json::Value) -> Option<&'static str> {
    let ty = pre.get("type")?.as_str()?;
    match ty {
        "ByteLevel" if pre.get("use_regex").and_then(|v| v.as_bool()) != Some(false) => {
            Some("gpt-2")
        }
        "Sequence" => {
            let parts = pre.get("pretokenizers")?.as_array()?;
            // SmolLM2's (and StarCoder's): single digits, then GPT-2's byte-level split.
            if let [digits, byte_level] = parts.as_slice() {
                if digits["type"] == "Digits"
                    && digits["individual_digits"] == true
                    && byte_level["type"] == "ByteLevel"
                    && byte_level.get("use_regex").and_then(|v| v.as_bool()) != Some(false)
                {
                    return Some("smollm");
                }
            }
            let split = parts.iter().find(|p| p["type"] == "Split")?;
            let pattern = split["pattern"]["Regex"].as_str()?;
            pattern
                .starts_with(LLAMA3_PATTERN_START)
                .then_some("llama-bpe")
        }
        _ => None,
    }
}

/// The `tokenizer.*` keys for `model`'s tokenizer.
pub fn tokenizer_keys(model: &Model) -> Result<Vec<(String, Value)>> {
    let what = |m: &str| {
        Error::msg(format!(
            "export_gguf: the tokenizer of {} {m}",
            model.source
        ))
    };
    let json: serde_json::Value = serde_json::from_str(
        &model
            .tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| what(&format!("could not be serialised: {e}")))?,
    )
    .map_err(|e| what(&format!("could not be read back: {e}")))?;
    let m = &json["model"];
    if m["type"] != "BPE" {
        return Err(what(&format!(
            "is {}, not byte-level BPE; only BPE tokenizers can be written as GGUF keys so far",
            m["type"]
        )));
    }
    let pre = pre_name(&json["pre_tokenizer"]).ok_or_else(|| {
        what("has a pre-tokenizer tunelab cannot name for llama.cpp (it knows GPT-2's ByteLevel and Llama 3's split); export from a GGUF model instead")
    })?;
    let vocab = m["vocab"]
        .as_object()
        .ok_or_else(|| what("has no vocabulary"))?;
    let n = model.config().vocab_size.max(model.tokenizer.vocab_size());
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![NORMAL; n];
    for (token, id) in vocab {
        let id = id.as_u64().ok_or_else(|| what("has a non-integer id"))? as usize;
        if id < n {
            tokens[id] = Some(token.clone());
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let id = id as usize;
        if id < n {
            tokens[id] = Some(content.to_string());
            types[id] = if added["special"] == true {
                CONTROL
            } else {
                USER_DEFINED
            };
        }
    }
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            Value::String(t.unwrap_or_else(|| {
                types[id] = UNUSED;
                format!("[PAD{id}]")
            }))
        })
        .collect();
    let merges: Vec<Value> = m["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|merge| match merge {
            serde_json::Value::Array(pair) => Value::String(format!(
                "{} {}",
                pair.first().and_then(|v| v.as_str()).unwrap_or(""),
                pair.get(1).and_then(|v| v.as_str()).unwrap_or("")
            )),
            other => Value::String(other.as_str().unwrap_or("").to_string()),
        })
        .collect();
    use super::types::type_id;
    let mut keys = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(type_id::STRING, tokens),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(type_id::I32, types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(type_id::STRING, merges),
        ),
    ];
    let id_of = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| model.tokenizer.token_id(t))
            .map(Value::U32)
    };
    if let Some(bos) = id_of(&model.bos_token) {
        keys.push(("tokenizer.ggml.bos_token_id".into(), bos));
    }
    if let Some(eos) = id_of(&model.eos_token) {
        keys.push(("tokenizer.ggml.eos_token_id".into(), eos));
    }
    keys.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(model.add_bos),
    ));
    if let Some(t) = &model.chat_template {
        keys.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    Ok(keys)
}
