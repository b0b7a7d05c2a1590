//! A model (optionally with a LoRA adapter merged in) as a llama GGUF that llama.cpp loads: the
//! Hugging Face tensor names mapped to llama.cpp's, the q/k rows permuted back to llama.cpp's
//! rotary layout (the loader undoes it; specs/llamacpp.md §4), llama metadata from the config,
//! the tokenizer and chat template copied from the source GGUF, and the 2-D weights in F32, F16,
//! BF16, or a llama-quantize preset ([`crate::quant::mixture`]: per-tensor types and fallbacks,
//! quantized by tunelab's reference quantizers); norms and other 1-D tensors stay F32, as
//! llama.cpp's converter writes them.
//!
//! A model that did not come from a GGUF (a Hugging Face folder, `tiny`) has its byte-level BPE
//! tokenizer converted ([`super::tokenizer_keys`]). Not yet: SentencePiece tokenizers from
//! Hugging Face folders, and Llama 3 rope scaling (llama.cpp's `rope_freqs` tensor).

use std::path::Path;

use half::{bf16, f16};

use super::types::{GgmlType, Value};
use super::{GgufReader, GgufWriter};
use crate::error::{Error, Result};
use crate::ggml::blocks::Format;
use crate::lora::Adapter;
use crate::model::Model;
use crate::quant::plan::QuantPlan;

/// What `export_gguf` writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub target: ExportType,
}

/// The types of the exported weights (F32/F16/BF16 for all, or a llama-quantize preset).
pub use crate::quant::plan::Target as ExportType;

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub tensors: usize,
    pub bytes: u64,
    pub file_type: u32,
}

/// The llama.cpp name of a Hugging Face Llama tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let part = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.{kind}"))
}

/// HF → llama.cpp row order of a q or k projection with `n_head` heads: within each head, row
/// `j·hd/2 + i` moves to `2i + j` (rows of `cols` values; a bias has `cols` = 1).
pub fn permute_rows(w: &[f32], cols: usize, n_head: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let hd = rows / n_head;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let from = h * hd + j * hd / 2 + i;
                let to = h * hd + 2 * i + j;
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// `values` (rows of `cols`) encoded as `t`.
pub fn encode(values: &[f32], cols: usize, t: &GgmlType) -> Result<Vec<u8>> {
    encode_weighted(values, cols, t, None)
}

/// `values` (rows of `cols`) encoded as `t`, with ggml's importance-weighted quantizers when
/// `importance` (one value per column, from an importance matrix) is given.
pub fn encode_weighted(
    values: &[f32],
    cols: usize,
    t: &GgmlType,
    importance: Option<&[f32]>,
) -> Result<Vec<u8>> {
    if importance.is_some() && !matches!(t.name, "F32" | "F16" | "BF16") {
        return crate::ggml::weighted::quantize_weighted(t.name, values, cols, importance);
    }
    Ok(match t.name {
        "F32" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        "F16" => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        "BF16" => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect(),
        name if crate::ggml::kquants::k_quant(name).is_some() => {
            let (row, _) = crate::ggml::kquants::k_quant(name).expect("a K-quant");
            use rayon::prelude::*;
            let rows: Vec<Vec<u8>> = values.par_chunks(cols).map(row).collect::<Result<_>>()?;
            rows.concat()
        }
        name => {
            let format = Format::of_name(name).ok_or_else(|| {
                Error::msg(format!(
                    "export_gguf: tunelab cannot quantize to {name} yet"
                ))
            })?;
            crate::ggml::quantize::quantize(format, values, cols)?
        }
    })
}

/// Write `model` (with `adapter` merged in, if given) to `path` as a llama GGUF.
pub fn export_gguf(
    model: &Model,
    adapter: Option<&Adapter>,
    path: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    export_gguf_planned(
        model,
        adapter,
        path,
        &QuantPlan::new(opts.target),
        &mut |_| {},
    )
}

/// Where an export stands, for progress bars: tensor `done` of `total` was just written.
#[derive(Debug, Clone, Copy)]
pub struct ExportProgress<'a> {
    pub done: usize,
    pub total: usize,
    pub name: &'a str,
    pub ggml_type: &'static str,
}

/// [`export_gguf`] with every tensor's type decided by `plan` (rules, overrides, pure), calling
/// `progress` after each tensor.
pub fn export_gguf_planned(
    model: &Model,
    adapter: Option<&Adapter>,
    path: &Path,
    plan: &QuantPlan,
    progress: &mut dyn FnMut(ExportProgress),
) -> Result<ExportReport> {
    let ft = plan.target.file_type();
    if model.config().rope_scaling.is_some() {
        return Err(Error::msg(format!(
            "export_gguf: {} uses Llama 3 rope scaling, which a GGUF carries as a rope_freqs tensor tunelab does not write yet",
            model.source
        )));
    }
    // A model read from a GGUF keeps that file's general.* and tokenizer keys; any other has its
    // tokenizer converted (Hugging Face folders, tiny).
    let source = match model.format {
        "gguf" => Some(GgufReader::open(&model.source)?),
        _ => None,
    };
    let tokenizer = match &source {
        Some(s) => s
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .cloned()
            .collect(),
        None => super::tokenizer_keys::tokenizer_keys(model)?,
    };
    let model = &crate::lora::merge::merged_or_base(model, adapter)?;
    let c = model.config();
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    if source.is_none() {
        let name = std::path::Path::new(&model.source)
            .file_name()
            .map_or(model.source.clone(), |n| n.to_string_lossy().into_owned());
        w.set("general.name", Value::String(name));
    }
    for (k, v) in source.iter().flat_map(|s| &s.metadata) {
        if k.starts_with("general.")
            && !matches!(
                k.as_str(),
                "general.architecture"
                    | "general.file_type"
                    | "general.quantization_version"
                    | "general.alignment"
            )
        {
            w.set(k.clone(), v.clone());
        }
    }
    let u32v = |n: usize| Value::U32(n as u32);
    w.set("llama.block_count", u32v(c.num_hidden_layers));
    w.set("llama.context_length", u32v(c.max_position_embeddings));
    w.set("llama.embedding_length", u32v(c.hidden_size));
    w.set("llama.feed_forward_length", u32v(c.intermediate_size));
    w.set("llama.attention.head_count", u32v(c.num_attention_heads));
    w.set("llama.attention.head_count_kv", u32v(c.num_key_value_heads));
    w.set("llama.rope.freq_base", Value::F32(c.rope_theta as f32));
    w.set(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(c.rms_norm_eps as f32),
    );
    w.set("llama.rope.dimension_count", u32v(c.head_dim));
    w.set("llama.vocab_size", u32v(c.vocab_size));
    if c.head_dim * c.num_attention_heads != c.hidden_size {
        w.set("llama.attention.key_length", u32v(c.head_dim));
        w.set("llama.attention.value_length", u32v(c.head_dim));
    }
    w.set("general.file_type", Value::U32(ft));
    for (k, v) in tokenizer {
        w.set(k, v);
    }
    if matches!(plan.target, ExportType::Preset(_)) {
        w.set("general.quantization_version", Value::U32(2));
    }
    // What llama-quantize records about an importance matrix (its key/value overrides, in order).
    for (k, v) in plan
        .importance
        .iter()
        .flat_map(|i| i.keys.iter())
        .flat_map(|k| k.metadata())
    {
        w.set(k, v);
    }
    let f32_type = GgmlType::from_name("F32").expect("F32");
    let mut bytes = 0u64;
    let tensors = model.llama.hf_tensors()?;
    for (i, (hf, t)) in tensors.iter().enumerate() {
        let name = gguf_name(hf)
            .ok_or_else(|| Error::msg(format!("export_gguf: no llama.cpp name for tensor {hf}")))?;
        let dims = t.dims().to_vec();
        let mut values: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1()?;
        let cols = if dims.len() == 2 { dims[1] } else { 1 };
        let heads = if hf.contains("self_attn.q_proj") {
            Some(c.num_attention_heads)
        } else if hf.contains("self_attn.k_proj") {
            Some(c.num_key_value_heads)
        } else {
            None
        };
        if let Some(n_head) = heads {
            values = permute_rows(&values, cols, n_head);
        }
        let ne: Vec<u64> = dims.iter().rev().map(|&d| d as u64).collect();
        let t_type = if dims.len() < 2 || name.ends_with("_norm.weight") {
            f32_type
        } else {
            plan.tensor_type(&name, &ne, &crate::quant::plan::shape_of(c))
        };
        let importance = plan
            .importance_for(&name, cols, &t_type)
            .map_err(|e| Error::msg(format!("export_gguf: {e}")))?;
        let data = encode_weighted(&values, cols, &t_type, importance)?;
        bytes += data.len() as u64;
        progress(ExportProgress {
            done: i + 1,
            total: tensors.len(),
            name: &name,
            ggml_type: t_type.name,
        });
        w.add_tensor(name, &ne, t_type, data)?;
    }
    w.write(path)?;
    Ok(ExportReport {
        tensors: tensors.len(),
        bytes,
        file_type: ft,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_llama_cpp_s_converter_does() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            (
                "model.layers.12.mlp.down_proj.weight",
                "blk.12.ffn_down.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
            ("model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias"),
            ("lm_head.weight", "output.weight"),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(gguf_name("model.layers.0.mystery.weight"), None);
    }

    /// specs/llamacpp.md: with head_dim 6 the rows become 0, 3, 1, 4, 2, 5.
    #[test]
    fn the_permutation_interleaves_the_halves_of_each_head() {
        let rows: Vec<f32> = (0..12).map(|r| r as f32).collect(); // 2 heads × 6 rows, 1 column
        assert_eq!(
            permute_rows(&rows, 1, 2),
            vec![0., 3., 1., 4., 2., 5., 6., 9., 7., 10., 8., 11.]
        );
    }
}
