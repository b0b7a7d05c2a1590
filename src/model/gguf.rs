//! Reading a GGUF model file: its metadata as a [`LlamaConfig`], its tensors (dequantized or kept
//! quantized), with HF-layout q/k rows.
//!
//! Facts (specs/llamacpp.md §4): tensor names `token_embd`, `blk.N.attn_q`, ..., `output`
//! (absent when tied); llama metadata under `llama.*`; and the q/k row permutation that
//! `convert_hf_to_gguf.py` applies so llama.cpp can rotate adjacent pairs. tunelab keeps every
//! model in the Hugging Face layout (rotate halves), so the permutation is undone on load — for
//! quantized tensors too, by reordering whole rows of blocks (a row's blocks never mix rows).
//!
//! Before any tensor is read, every tensor's byte range is checked against the file size, so a
//! truncated download is an error naming the file and the first tensor cut off — not a crash.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file, gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::config::{LlamaConfig, SUPPORTED_ARCHITECTURES};
use crate::error::{candle_message, Error, Result};

/// An open GGUF file with its header read and checked.
pub struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
}

impl GgufFile {
    /// Read and check the header of `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            Error::data(
                path,
                "header",
                format!(
                    "not a readable GGUF file ({}); is the download complete?",
                    candle_message(&e)
                ),
            )
        })?;
        for (name, info) in &content.tensor_infos {
            // Checked: the dimensions come from the file, and their product can overflow. A tensor
            // of no elements is refused too: candle reads its (empty) bytes as a slice of blocks,
            // which is undefined behaviour for a zero-length buffer.
            let elems = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    Error::data(
                        path,
                        format!("tensor \"{name}\""),
                        format!(
                            "dimensions {:?} hold no elements or more than memory can; the file is corrupt",
                            info.shape.dims()
                        ),
                    )
                })?;
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(Error::data(
                    path,
                    format!("tensor \"{name}\""),
                    format!(
                        "{elems} elements is not a whole number of {:?} blocks",
                        info.ggml_dtype
                    ),
                ));
            }
            let end = ((elems / block) as u64)
                .checked_mul(info.ggml_dtype.type_size() as u64)
                .and_then(|bytes| bytes.checked_add(info.offset))
                .and_then(|e| e.checked_add(content.tensor_data_offset))
                .unwrap_or(u64::MAX);
            if end > file_len {
                return Err(Error::data(
                    path,
                    format!("tensor \"{name}\""),
                    format!("the file is truncated: this tensor ends at byte {end} but the file has {file_len} bytes; download it again"),
                ));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw metadata.
    pub fn metadata(&self) -> &std::collections::HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }

    /// A metadata string.
    pub fn string(&self, key: &str) -> Option<String> {
        self.content.metadata.get(key)?.to_string().ok().cloned()
    }

    /// A metadata number as u64 (any integer type).
    pub fn uint(&self, key: &str) -> Option<u64> {
        use gguf_file::Value::*;
        Some(match self.content.metadata.get(key)? {
            U8(v) => *v as u64,
            I8(v) => *v as u64,
            U16(v) => *v as u64,
            I16(v) => *v as u64,
            U32(v) => *v as u64,
            I32(v) => *v as u64,
            U64(v) => *v,
            I64(v) => *v as u64,
            _ => return None,
        })
    }

    /// A metadata float.
    pub fn float(&self, key: &str) -> Option<f64> {
        use gguf_file::Value::*;
        match self.content.metadata.get(key)? {
            F32(v) => Some(*v as f64),
            F64(v) => Some(*v),
            _ => self.uint(key).map(|v| v as f64),
        }
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The storage type of tensor `name`.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|i| i.ggml_dtype)
    }

    fn missing(&self, what: &str) -> Error {
        Error::data(
            &self.path,
            format!("metadata \"{what}\""),
            "missing; is this a llama-architecture GGUF?",
        )
    }

    /// The model shape from the metadata.
    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self
            .string("general.architecture")
            .ok_or_else(|| self.missing("general.architecture"))?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(Error::data(
                &self.path,
                "metadata \"general.architecture\"",
                format!(
                    "\"{arch}\" is not supported; tunelab runs {}",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let need = |k: &str| {
            self.uint(&key(k))
                .map(|v| v as usize)
                .ok_or_else(|| self.missing(&key(k)))
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let vocab = match self.uint(&key("vocab_size")) {
            Some(v) => v as usize,
            None => match self.content.metadata.get("tokenizer.ggml.tokens") {
                Some(gguf_file::Value::Array(tokens)) => tokens.len(),
                _ => return Err(self.missing(&key("vocab_size"))),
            },
        };
        let head_dim = self
            .uint(&key("attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(hidden / heads.max(1));
        let config = LlamaConfig {
            architecture: arch.clone(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: need("feed_forward_length")?,
            num_hidden_layers: need("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .uint(&key("attention.head_count_kv"))
                .map(|v| v as usize)
                .unwrap_or(heads),
            head_dim,
            rms_norm_eps: self
                .float(&key("attention.layer_norm_rms_epsilon"))
                .ok_or_else(|| self.missing(&key("attention.layer_norm_rms_epsilon")))?,
            rope_theta: self.float(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: need("context_length")?,
            tie_word_embeddings: !self.has_tensor("output.weight"),
            attention_bias: self.has_tensor("blk.0.attn_q.bias"),
            bos_token_id: self.uint("tokenizer.ggml.bos_token_id").map(|v| v as u32),
            eos_token_ids: self
                .uint("tokenizer.ggml.eos_token_id")
                .map(|v| vec![v as u32])
                .unwrap_or_default(),
        };
        if self.has_tensor("rope_freqs.weight") {
            return Err(Error::data(&self.path, "tensor \"rope_freqs.weight\"", "Llama-3.1 rope frequency factors in GGUF are not supported yet; load the Hugging Face folder instead"));
        }
        config.validate(&self.path.display().to_string())?;
        Ok(config)
    }

    /// Tensor `name` as stored (quantized or not).
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        self.content
            .tensor(&mut file, name, device)
            .map_err(|e| Error::data(&self.path, format!("tensor \"{name}\""), candle_message(&e)))
    }
}

/// Undo llama.cpp's q/k row permutation on a quantized (or plain) weight of shape
/// (n_head · head_dim, in): GGUF row `h·hd + 2i + j` holds HF row `h·hd + j·hd/2 + i`.
pub fn unpermute_rows(t: &QTensor, n_head: usize, device: &Device) -> Result<QTensor> {
    let dims = t.shape().dims().to_vec();
    // (rows, cols): checked before indexing, as a file may give a q/k weight any shape.
    let (rows, cols) = match dims[..] {
        [rows, cols] => (rows, cols),
        _ => (0, 0),
    };
    let dtype = t.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    if rows == 0 || n_head == 0 || rows % n_head != 0 || !(rows / n_head).is_multiple_of(2) {
        return Err(Error::msg(format!(
            "a q/k weight of shape {dims:?} does not split into {n_head} heads of even size; the file does not match its own metadata"
        )));
    }
    let data = t.data()?;
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let gguf_row = h * head_dim + 2 * i + j;
                let hf_row = h * head_dim + j * half + i;
                out[hf_row * row_bytes..(hf_row + 1) * row_bytes]
                    .copy_from_slice(&data[gguf_row * row_bytes..(gguf_row + 1) * row_bytes]);
            }
        }
    }
    Ok(ggml_file::qtensor_from_ggml(dtype, &out, dims, device)?)
}
