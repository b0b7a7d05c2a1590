//! Tokenizers: Hugging Face `tokenizer.json`, the vocabulary inside a GGUF (byte-level BPE here,
//! SentencePiece in [`super::spm`]), and the tiny preset's.
//!
//! All three become a `tokenizers::Tokenizer` (the crate candle itself builds on). For GGUF files
//! candle's converter builds the BPE from `tokenizer.ggml.tokens`/`merges`/`token_type`, but picks
//! the pre-tokenizer from `tokenizer.ggml.pre` with a table that lacks `smollm` (falling back to
//! GPT-2's `add_prefix_space = true`, which turns "Hello" into the wrong token). tunelab sets the
//! pre-tokenizer itself for the names it knows (specs/candle.md §1.3).

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::PreTokenizerWrapper;

use super::gguf::GgufFile;
use crate::error::{candle_message, Error, Result};

/// A tokenizer with the ids generation needs; cheap to clone.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// Where it came from (for printing).
    pub source: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer({} tokens, {})",
            self.vocab_size(),
            self.source
        )
    }
}

impl Tokenizer {
    /// Wrap a built `tokenizers::Tokenizer`.
    pub fn new(inner: tokenizers::Tokenizer, source: impl Into<String>) -> Self {
        Tokenizer {
            inner: Arc::new(inner),
            source: source.into(),
        }
    }

    /// Read a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Error::data(path, "file", format!("not a readable tokenizer.json: {e}"))
        })?;
        Ok(Tokenizer::new(inner, path.display().to_string()))
    }

    /// Build the tokenizer stored in a GGUF file.
    pub fn from_gguf(
        file: &GgufFile,
        content: &candle_core::quantized::gguf_file::Content,
    ) -> Result<Tokenizer> {
        let kind = file.string("tokenizer.ggml.model").unwrap_or_default();
        if kind == "llama" {
            let vocab = super::spm::SpmVocab::from_gguf(file)?;
            let inner = super::spm::build(&vocab)
                .map_err(|e| Error::data(file.path(), "SentencePiece vocabulary", e))?;
            return Ok(Tokenizer::new(
                inner,
                format!("{} (GGUF, SentencePiece)", file.path().display()),
            ));
        }
        if kind != "gpt2" {
            return Err(Error::data(
                file.path(),
                "metadata \"tokenizer.ggml.model\"",
                format!("\"{kind}\" tokenizers in GGUF are not supported (byte-level BPE \"gpt2\" and SentencePiece \"llama\" are); load the Hugging Face folder (with tokenizer.json) instead"),
            ));
        }
        check_merges(file, content)?;
        let mut inner = tokenizers::Tokenizer::from_gguf(content)
            .map_err(|e| Error::data(file.path(), "tokenizer", candle_message(&e)))?;
        let pre = file
            .string("tokenizer.ggml.pre")
            .unwrap_or_else(|| "gpt2".into());
        if let Some(fixed) = pre_tokenizer_for(&pre) {
            inner.with_pre_tokenizer(Some(fixed));
        }
        Ok(Tokenizer::new(
            inner,
            format!("{} (GGUF, pre \"{pre}\")", file.path().display()),
        ))
    }

    /// Token ids of `text`; special-token strings (e.g. `<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::msg(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens included when `skip_special` is false).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::msg(format!("tokenizer: {e}")))
    }

    /// The id of a token string (e.g. `<|im_end|>`), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of `id`.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Every BPE merge of a GGUF vocabulary joins two of its tokens into a third. The tokenizers
/// crate builds the merges in a buffer the length of the longest token and panics on a merge
/// longer than that (a GGUF whose token list was cut short; found by tests/mutation.rs), so a
/// merge whose result is not a token is refused here, naming it.
fn check_merges(
    file: &GgufFile,
    content: &candle_core::quantized::gguf_file::Content,
) -> Result<()> {
    use candle_core::quantized::gguf_file::Value;
    let strings = |key: &str| -> Vec<&str> {
        match content.metadata.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.to_string().ok().map(String::as_str))
                .collect(),
            _ => Vec::new(),
        }
    };
    let tokens: std::collections::HashSet<&str> =
        strings("tokenizer.ggml.tokens").into_iter().collect();
    let mut joined = String::new();
    for (i, merge) in strings("tokenizer.ggml.merges").into_iter().enumerate() {
        let Some((a, b)) = merge.split_once(' ') else {
            continue; // candle's converter names a merge without a space itself
        };
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        if !tokens.contains(joined.as_str()) {
            return Err(Error::data(
                file.path(),
                format!("metadata \"tokenizer.ggml.merges\" [{i}]"),
                format!("merge \"{merge}\" makes a token that is not in tokenizer.ggml.tokens; the vocabulary is cut short or corrupt"),
            ));
        }
    }
    Ok(())
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` name, where candle's default is wrong.
fn pre_tokenizer_for(pre: &str) -> Option<PreTokenizerWrapper> {
    match pre {
        // SmolLM2's tokenizer.json: individual digits, then byte-level without a prefix space.
        "smollm" | "starcoder" | "refact" => Some(
            Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
        ),
        // GPT-2 itself (llama.cpp calls it "gpt-2") does not add a prefix space either.
        "gpt-2" | "gpt2" | "default" => Some(ByteLevel::new(false, true, true).into()),
        _ => None,
    }
}

/// Streams text from tokens as they are generated: emits only complete UTF-8 text, holding back a
/// token that ends in the middle of a multi-byte character until the next one completes it.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// Add `id`; return the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        match text.get(self.emitted..) {
            Some(new) => {
                let new = new.to_string();
                self.emitted = text.len();
                Ok(new)
            }
            // Decoding changed earlier text (rare merges across tokens): emit nothing more.
            None => Ok(String::new()),
        }
    }
}
