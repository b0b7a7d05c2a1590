//! SentencePiece vocabularies stored in GGUF files (`tokenizer.ggml.model = "llama"`: Llama 2,
//! TinyLlama, Mistral 7B v0.1, Phi-3, …), built as a `tokenizers` BPE with byte fallback.
//!
//! A SentencePiece-BPE vocabulary has pieces and scores but no merge list: llama.cpp tokenizes
//! by repeatedly joining the adjacent pair whose joined piece has the highest score, and falls
//! back to `<0xXX>` byte pieces for characters outside the vocabulary. transformers turns the
//! same model into `LlamaTokenizerFast` by listing every split of every piece into two pieces as a
//! merge, ranked by the joined piece's score (its `SentencePieceExtractor`); a BPE that applies
//! merges by rank then joins exactly what llama.cpp joins. The text side is the "legacy" Llama
//! pipeline both tools share: a `▁` is prepended to each run of text (`add_space_prefix`, after
//! the start and after every special token), spaces become `▁`, and decoding reverses it.
//! Control and unknown pieces (`<s>`, `</s>`, `<unk>`) become special added tokens, user-defined
//! pieces plain added tokens, as in the converted Hugging Face tokenizer.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use super::gguf::GgufFile;
use crate::error::{Error, Result};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The SentencePiece vocabulary of a GGUF file.
#[derive(Debug, Clone)]
pub struct SpmVocab {
    /// `tokenizer.ggml.tokens`: the pieces, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: higher joins first.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte).
    pub types: Vec<i32>,
    /// `tokenizer.ggml.add_space_prefix` (llama.cpp's default: true).
    pub add_space_prefix: bool,
}

impl SpmVocab {
    /// Read the vocabulary of a GGUF file; a missing or mistyped array is named.
    pub fn from_gguf(file: &GgufFile) -> Result<SpmVocab> {
        use candle_core::quantized::gguf_file::Value;
        let array = |key: &str| -> Result<&Vec<Value>> {
            match file.metadata().get(key) {
                Some(Value::Array(items)) => Ok(items),
                _ => Err(Error::data(
                    file.path(),
                    format!("metadata \"{key}\""),
                    "missing or not an array; the SentencePiece vocabulary needs it",
                )),
            }
        };
        // One metadata array, each item converted by `item` (None: the wrong type, named).
        fn items<T>(
            file: &GgufFile,
            key: &str,
            items: &[Value],
            item: impl Fn(&Value) -> Option<T>,
        ) -> Result<Vec<T>> {
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    item(v).ok_or_else(|| {
                        Error::data(
                            file.path(),
                            format!("metadata \"{key}\" item {i}"),
                            "has the wrong type",
                        )
                    })
                })
                .collect()
        }
        let key = "tokenizer.ggml.tokens";
        let tokens = items(file, key, array(key)?, |v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })?;
        let key = "tokenizer.ggml.scores";
        let scores = items(file, key, array(key)?, |v| match v {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            _ => None,
        })?;
        let key = "tokenizer.ggml.token_type";
        let types = items(file, key, array(key)?, |v| match v {
            Value::I32(x) => Some(*x),
            Value::U32(x) => Some(*x as i32),
            _ => None,
        })?;
        let add_space_prefix = match file.metadata().get("tokenizer.ggml.add_space_prefix") {
            Some(Value::Bool(b)) => *b,
            _ => true,
        };
        Ok(SpmVocab {
            tokens,
            scores,
            types,
            add_space_prefix,
        })
    }
}

/// The merges a SentencePiece-BPE vocabulary implies: every split of a normal piece into two
/// pieces of the vocabulary, highest joined score first (ties: by the ids involved).
pub fn merges(vocab: &SpmVocab) -> Vec<(String, String)> {
    let ids: std::collections::HashMap<&str, usize> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (score of the joined piece, joined id, left id, right id)
    let mut ranked: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (joined, piece) in vocab.tokens.iter().enumerate() {
        if vocab.types.get(joined).copied().unwrap_or(NORMAL) != NORMAL {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                ranked.push((vocab.scores[joined], joined, l, r));
            }
        }
    }
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    ranked
        .into_iter()
        .map(|(_, _, l, r)| (vocab.tokens[l].clone(), vocab.tokens[r].clone()))
        .collect()
}

/// Build the tokenizer; an error says what is inconsistent in the vocabulary.
pub fn build(vocab: &SpmVocab) -> std::result::Result<tokenizers::Tokenizer, String> {
    let n = vocab.tokens.len();
    if vocab.scores.len() != n || vocab.types.len() != n {
        return Err(format!(
            "{n} tokens but {} scores and {} token types; the three arrays must have one entry per token",
            vocab.scores.len(),
            vocab.types.len()
        ));
    }
    let unk = vocab
        .types
        .iter()
        .position(|&t| t == UNKNOWN)
        .map(|i| vocab.tokens[i].clone());
    let table: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut bpe = BPE::builder()
        .vocab_and_merges(table, merges(vocab))
        .byte_fallback(vocab.types.contains(&BYTE))
        .fuse_unk(true);
    if let Some(unk) = unk {
        bpe = bpe.unk_token(unk);
    }
    let model = bpe
        .build()
        .map_err(|e| format!("cannot build the BPE: {e}"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);

    let space = Replace::new(" ", "▁").map_err(|e| e.to_string())?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if vocab.add_space_prefix {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(space.into());
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| e.to_string())?;

    let unspace = Replace::new("▁", " ").map_err(|e| e.to_string())?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(unspace),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if vocab.add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

    let added = |special: bool| -> Vec<AddedToken> {
        vocab
            .tokens
            .iter()
            .zip(&vocab.types)
            .filter(|(_, &t)| {
                if special {
                    t == CONTROL || t == UNKNOWN
                } else {
                    t == USER_DEFINED
                }
            })
            .map(|(tok, _)| AddedToken::from(tok.clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(true))
        .map_err(|e| e.to_string())?;
    tokenizer
        .add_tokens(added(false))
        .map_err(|e| e.to_string())?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: "▁low" is reachable as ("▁", "low") or ("▁l", "ow"), scores decide.
    fn toy() -> SpmVocab {
        let tokens = [
            "<unk>", "<s>", "</s>", "<0x41>", "▁", "l", "o", "w", "e", "r", "lo", "ow", "low",
            "▁l", "▁low", "er", "▁lower",
        ];
        let scores = [
            0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0, -11.0,
            -12.0, -13.0,
        ];
        let mut types = vec![NORMAL; tokens.len()];
        types[0] = UNKNOWN;
        types[1] = CONTROL;
        types[2] = CONTROL;
        types[3] = BYTE;
        SpmVocab {
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            scores: scores.to_vec(),
            types,
            add_space_prefix: true,
        }
    }

    #[test]
    fn merges_follow_the_joined_pieces_scores() {
        let m = merges(&toy());
        let first = |a: &str, b: &str| m.iter().position(|p| p.0 == a && p.1 == b).unwrap();
        assert!(first("l", "o") < first("o", "w"), "lo (-7) before ow (-8)");
        assert!(
            first("lo", "w") < first("▁l", "ow"),
            "low (-9) before ▁low (-11)"
        );
        assert!(!m.iter().any(|p| p.0 == "<s>" || p.1 == "<s>"));
    }

    #[test]
    fn encodes_with_a_space_prefix_byte_fallback_and_special_tokens() {
        let t = build(&toy()).unwrap();
        let ids = |s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
        // "▁lower": l+o → lo, lo+w → low, ▁+low → ▁low, e+r → er, ▁low+er → ▁lower.
        assert_eq!(ids("lower"), vec![16]);
        // "A" is not a piece: its byte.
        assert_eq!(ids("A"), vec![4, 3]);
        assert_eq!(ids("<s>low"), vec![1, 14]);
        let text = t.decode(&ids("low lower"), false).unwrap();
        assert_eq!(text, "low lower");
    }

    #[test]
    fn inconsistent_arrays_are_named() {
        let mut v = toy();
        v.scores.pop();
        assert!(build(&v).unwrap_err().contains("16 scores"));
    }
}
