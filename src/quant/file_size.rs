//! The exact size of the GGUF file tunelab's export ([`crate::gguf::export::export_gguf_planned`])
//! would write for a given choice of per-tensor types, without quantizing or writing anything:
//! what `auto_mix` needs to hold a byte budget for the whole file, token embedding, output,
//! tokenizer and header included.
//!
//! The layout, as [`crate::gguf::write`] lays it out:
//!
//! | part | bytes |
//! |---|---|
//! | magic, version, tensor count, key count | 4 + 4 + 8 + 8 |
//! | each key/value | 8 + key + 4 (type) + value (strings 8 + bytes; arrays 4 + 8 + items) |
//! | each tensor description | 8 + name + 4 + 8·dims + 4 (type) + 8 (offset) |
//! | padding | to the alignment (32) |
//! | each tensor's data | its blocks, padded to the alignment |
//!
//! Everything but the data of the 2-D weights is fixed by the model: the tensor descriptions do not
//! depend on the type (an id of 4 bytes either way). So a [`FileLayout`] is built once, and a file's
//! size is its fixed part plus, for each weight, [`FileLayout::tensor_bytes`] in the chosen type —
//! a sum per tensor, which is what the solver ([`super::allocate`]) needs.
//!
//! The metadata is the export's: llama keys from the config, the tokenizer (converted, or copied
//! from the source GGUF with its `general.*` keys), `general.file_type`, and
//! `general.quantization_version` for a preset target. Keys the export adds in other cases (an
//! importance matrix's `quantize.imatrix.*`) are given with [`FileLayout::set_metadata`].

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gguf::types::pad;
use crate::gguf::{GgmlType, GgufReader, Value, DEFAULT_ALIGNMENT, MAX_DIMS};
use crate::lora::config::Target as Projection;
use crate::model::Model;
use crate::quant::mixture::LlamaShape;
use crate::quant::plan::{shape_of, QuantPlan, Target, WRITABLE};

/// Whether `ty` can hold rows of `row_len` weights: whole blocks only (K-quants and the IQ types
/// need multiples of 256, the 32-weight formats multiples of 32). The same test as llama.cpp's
/// fallback ([`super::mixture::fallback`] keeps a type exactly when it passes).
pub fn holds_rows(ty: GgmlType, row_len: u64) -> bool {
    row_len.is_multiple_of(ty.block)
}

/// The types tunelab can write ([`WRITABLE`]) that hold rows of `row_len` weights, smallest first.
pub fn candidate_types(row_len: u64) -> Vec<GgmlType> {
    let mut types: Vec<GgmlType> = WRITABLE
        .iter()
        .filter_map(|name| GgmlType::from_name(name))
        .filter(|&t| holds_rows(t, row_len))
        .collect();
    types.sort_by(|a, b| a.bits_per_weight().total_cmp(&b.bits_per_weight()));
    types
}

/// A tensor of the file: its llama.cpp name and dimensions in ggml order (row length first).
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutTensor {
    pub name: String,
    pub ne: Vec<u64>,
}

impl LayoutTensor {
    /// Weights per row.
    pub fn row_len(&self) -> u64 {
        self.ne[0]
    }

    /// Number of weights.
    pub fn elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Whether its type is chosen (a 2-D `.weight` that is not a norm), as
    /// [`QuantPlan::tensor_type`] decides; the others are always F32.
    fn is_weight(&self) -> bool {
        self.ne.len() >= 2 && self.name.ends_with(".weight") && !self.name.ends_with("_norm.weight")
    }
}

/// Everything about an exported file's size that does not depend on the weights' types.
#[derive(Debug, Clone)]
pub struct FileLayout {
    /// The key/values the export writes, in its order.
    metadata: Vec<(String, Value)>,
    /// The tensors whose type is chosen, in file order, and where each is by name.
    weights: Vec<LayoutTensor>,
    by_name: HashMap<String, usize>,
    /// The tensors that stay F32 (norms, biases).
    fixed: Vec<LayoutTensor>,
    shape: LlamaShape,
    /// The plan's target; a preset makes the export write `general.quantization_version`.
    target: Target,
}

impl FileLayout {
    /// The layout of `model` exported with a plan whose target is `target` (only whether it is
    /// a preset or F32/F16/BF16 changes the size).
    pub fn new(model: &Model, target: &Target) -> Result<FileLayout> {
        let (mut weights, mut fixed) = (Vec::new(), Vec::new());
        for t in tensors_of(model)? {
            if t.is_weight() {
                weights.push(t);
            } else {
                fixed.push(t);
            }
        }
        let by_name = weights
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(FileLayout {
            metadata: export_metadata(model, target)?,
            weights,
            by_name,
            fixed,
            shape: shape_of(model.config()),
            target: *target,
        })
    }

    /// Add `key` (or replace its value), as the export's writer does: for keys the export writes
    /// in cases the layout does not know of (an importance matrix's `quantize.imatrix.file`,
    /// `.dataset`, `.entries_count`, `.chunks_count`). The value's type must be the export's.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// The tensors whose type is chosen (2-D weights, token embedding and output included).
    pub fn weights(&self) -> &[LayoutTensor] {
        &self.weights
    }

    /// The weight called `name`.
    pub fn weight(&self, name: &str) -> Option<&LayoutTensor> {
        self.by_name.get(name).map(|&i| &self.weights[i])
    }

    /// The target the layout was built for.
    pub fn target(&self) -> Target {
        self.target
    }

    fn is_preset(&self) -> bool {
        matches!(self.target, Target::Preset(_))
    }

    /// What the model's mixture rules need to know of it.
    pub fn shape(&self) -> LlamaShape {
        self.shape
    }

    /// The data section's alignment: `general.alignment` when set (a power of two), else 32.
    fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Bytes that do not depend on the weights' types: the header (key/values, every tensor's
    /// description, padding) and the F32 tensors' data.
    pub fn fixed_bytes(&self) -> u64 {
        let align = self.alignment();
        let mut keys: Vec<&(String, Value)> = self.metadata.iter().collect();
        let version = ("general.quantization_version".to_string(), Value::U32(2));
        if self.is_preset() && !keys.iter().any(|(k, _)| *k == version.0) {
            keys.push(&version);
        }
        let header = 4
            + 4
            + 8
            + 8
            + keys
                .iter()
                .map(|(k, v)| 8 + k.len() as u64 + 4 + value_bytes(v))
                .sum::<u64>()
            + self
                .weights
                .iter()
                .chain(&self.fixed)
                .map(|t| 8 + t.name.len() as u64 + 4 + 8 * t.ne.len() as u64 + 4 + 8)
                .sum::<u64>();
        let f32_data: u64 = self
            .fixed
            .iter()
            .map(|t| pad(4 * t.elements(), align))
            .sum();
        pad(header, align) + f32_data
    }

    /// The bytes weight `name` adds to the file in type `ty`: its blocks, padded to the alignment.
    pub fn tensor_bytes(&self, name: &str, ty: GgmlType) -> Result<u64> {
        let t = self.weight(name).ok_or_else(|| {
            Error::msg(format!(
                "file_size: the model has no weight called {name}; FileLayout::weights lists them"
            ))
        })?;
        if !holds_rows(ty, t.row_len()) {
            return Err(Error::msg(format!(
                "file_size: {name} has rows of {} weights, not whole {}-weight blocks of {}; choose one of {}",
                t.row_len(),
                ty.block,
                ty.name,
                names(&candidate_types(t.row_len()))
            )));
        }
        let bytes = ty.bytes_for(t.elements()).ok_or_else(|| {
            Error::msg(format!("file_size: {name} in {} overflows a u64", ty.name))
        })?;
        Ok(pad(bytes, self.alignment()))
    }

    /// The size of the whole file when each weight `name` has type `type_of(name)`.
    pub fn size_with(&self, type_of: impl Fn(&str) -> GgmlType) -> Result<u64> {
        self.size_by(|t| type_of(&t.name))
    }

    /// The size of the file [`export_gguf_planned`](crate::gguf::export::export_gguf_planned)
    /// writes with `plan`.
    pub fn size_of_plan(&self, plan: &QuantPlan) -> Result<u64> {
        if matches!(plan.target, Target::Preset(_)) != self.is_preset() {
            return Err(Error::msg(format!(
                "file_size: the layout was built for target {} but the plan's is {}, which changes the metadata; build it with FileLayout::new(model, &plan.target)",
                self.target.name(),
                plan.target.name()
            )));
        }
        self.size_by(|t| plan.tensor_type(&t.name, &t.ne, &self.shape))
    }

    fn size_by(&self, type_of: impl Fn(&LayoutTensor) -> GgmlType) -> Result<u64> {
        let mut total = self.fixed_bytes();
        for t in &self.weights {
            total += self.tensor_bytes(&t.name, type_of(t))?;
        }
        Ok(total)
    }

    /// The bytes the weights may take when the whole file must fit `file_budget`.
    pub fn weight_budget(&self, file_budget: u64) -> Result<u64> {
        let fixed = self.fixed_bytes();
        file_budget.checked_sub(fixed).ok_or_else(|| {
            Error::msg(format!(
                "auto_mix: a budget of {file_budget} bytes ({:.2} MB) does not even hold the file's fixed part — header, tokenizer, norms — of {fixed} bytes ({:.2} MB); raise the budget",
                file_budget as f64 / 1e6,
                fixed as f64 / 1e6
            ))
        })
    }

    /// Weights in every tensor of the file (norms and biases included).
    pub fn elements(&self) -> u64 {
        self.weights
            .iter()
            .chain(&self.fixed)
            .map(LayoutTensor::elements)
            .sum()
    }

    /// Bits per weight as llama.cpp reports it on loading: every tensor's data (unpadded, F32
    /// norms included) × 8 / every tensor's weights.
    pub fn bits_per_weight(&self, type_of: impl Fn(&str) -> GgmlType) -> f64 {
        let data: u64 = self
            .weights
            .iter()
            .map(|t| type_of(&t.name).bytes_for(t.elements()).unwrap_or(0))
            .chain(self.fixed.iter().map(|t| 4 * t.elements()))
            .sum();
        data as f64 * 8.0 / self.elements().max(1) as f64
    }
}

fn names(types: &[GgmlType]) -> String {
    types.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// Bytes of `value` in a GGUF header (after its type id).
fn value_bytes(value: &Value) -> u64 {
    match value {
        Value::U8(_) | Value::I8(_) | Value::Bool(_) => 1,
        Value::U16(_) | Value::I16(_) => 2,
        Value::U32(_) | Value::I32(_) | Value::F32(_) => 4,
        Value::U64(_) | Value::I64(_) | Value::F64(_) => 8,
        Value::String(s) => 8 + s.len() as u64,
        // Element type id, count, then the elements.
        Value::Array(_, items) => 4 + 8 + items.iter().map(value_bytes).sum::<u64>(),
    }
}

/// Every tensor the export writes, as `Llama::hf_tensors` lists them (without dequantizing:
/// only shapes are read), under their llama.cpp names.
fn tensors_of(model: &Model) -> Result<Vec<LayoutTensor>> {
    let l = &model.llama;
    let mut hf: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), l.embed.dims().to_vec())];
    for (i, b) in l.blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        hf.push((
            format!("{p}.input_layernorm.weight"),
            b.attn_norm.dims().to_vec(),
        ));
        hf.push((
            format!("{p}.post_attention_layernorm.weight"),
            b.mlp_norm.dims().to_vec(),
        ));
        for t in Projection::ALL {
            let lin = b.linear(t);
            let (out, inp) = lin.dims();
            hf.push((format!("{p}.{}.weight", t.path()), vec![out, inp]));
            if let Some(bias) = &lin.bias {
                hf.push((format!("{p}.{}.bias", t.path()), bias.dims().to_vec()));
            }
        }
    }
    hf.push(("model.norm.weight".into(), l.norm.dims().to_vec()));
    if !l.config.tie_word_embeddings {
        let (out, inp) = l.lm_head.dims();
        hf.push(("lm_head.weight".into(), vec![out, inp]));
    }
    hf.into_iter()
        .map(|(name, dims)| {
            let gguf = crate::gguf::export::gguf_name(&name).ok_or_else(|| {
                Error::msg(format!("file_size: no llama.cpp name for tensor {name}"))
            })?;
            if dims.is_empty() || dims.len() > MAX_DIMS {
                return Err(Error::msg(format!(
                    "file_size: tensor {gguf} has {} dimensions; GGUF holds 1 to {MAX_DIMS}",
                    dims.len()
                )));
            }
            Ok(LayoutTensor {
                name: gguf,
                ne: dims.iter().rev().map(|&d| d as u64).collect(),
            })
        })
        .collect()
}

/// The key/values `export_gguf_planned` writes for `model` and a plan with `target` (without
/// `general.quantization_version`, which [`FileLayout::fixed_bytes`] adds for a preset).
/// Mirrors the export key for key; the tests compare sizes with real exports to catch drift.
fn export_metadata(model: &Model, target: &Target) -> Result<Vec<(String, Value)>> {
    let c = model.config();
    if c.rope_scaling.is_some() {
        return Err(Error::msg(format!(
            "file_size: {} uses Llama 3 rope scaling, which export_gguf cannot write yet",
            model.source
        )));
    }
    let source = match model.format {
        "gguf" => Some(GgufReader::open(&model.source)?),
        _ => None,
    };
    let mut keys: Vec<(String, Value)> =
        vec![("general.architecture".into(), Value::String("llama".into()))];
    match &source {
        None => {
            let name = std::path::Path::new(&model.source)
                .file_name()
                .map_or(model.source.clone(), |n| n.to_string_lossy().into_owned());
            keys.push(("general.name".into(), Value::String(name)));
        }
        Some(s) => keys.extend(
            s.metadata
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("general.")
                        && !matches!(
                            k.as_str(),
                            "general.architecture"
                                | "general.file_type"
                                | "general.quantization_version"
                                | "general.alignment"
                        )
                })
                .cloned(),
        ),
    }
    let u32v = |n: usize| Value::U32(n as u32);
    keys.extend([
        ("llama.block_count".into(), u32v(c.num_hidden_layers)),
        (
            "llama.context_length".into(),
            u32v(c.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u32v(c.hidden_size)),
        (
            "llama.feed_forward_length".into(),
            u32v(c.intermediate_size),
        ),
        (
            "llama.attention.head_count".into(),
            u32v(c.num_attention_heads),
        ),
        (
            "llama.attention.head_count_kv".into(),
            u32v(c.num_key_value_heads),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(c.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.dimension_count".into(), u32v(c.head_dim)),
        ("llama.vocab_size".into(), u32v(c.vocab_size)),
    ]);
    if c.head_dim * c.num_attention_heads != c.hidden_size {
        keys.push(("llama.attention.key_length".into(), u32v(c.head_dim)));
        keys.push(("llama.attention.value_length".into(), u32v(c.head_dim)));
    }
    keys.push(("general.file_type".into(), Value::U32(target.file_type())));
    match &source {
        Some(s) => keys.extend(
            s.metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer."))
                .cloned(),
        ),
        None => keys.extend(crate::gguf::tokenizer_keys::tokenizer_keys(model)?),
    }
    // Later keys replace earlier ones of the same name, as the writer's `set` does.
    let mut unique: Vec<(String, Value)> = Vec::with_capacity(keys.len());
    for (k, v) in keys {
        match unique.iter_mut().find(|(u, _)| *u == k) {
            Some(slot) => slot.1 = v,
            None => unique.push((k, v)),
        }
    }
    Ok(unique)
}
