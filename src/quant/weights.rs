//! The weights a quantizer chooses types for, named as llama.cpp names them, and the few things the
//! mixed-precision measures do with one of them: read it as f32, quantize it to a candidate type and
//! back ("fake quantization": the values the quantized file would compute with), and put it back
//! into a copy of the model.
//!
//! A tied model (SmolLM2) has no `output.weight`: its token embedding is also its output
//! projection, so changing `token_embd.weight` changes both, as it does in llama.cpp.

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gguf::export::encode_weighted;
use crate::gguf::GgmlType;
use crate::lora::config::Target;
use crate::model::linear::{Linear, Weight};
use crate::model::{Model, ModelParts};

/// Where a weight lives in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A projection of transformer block `layer`.
    Block(usize, Target),
    /// The token embedding (and, in a tied model, the output projection).
    TokenEmbd,
    /// The output projection of an untied model.
    Output,
}

/// One weight matrix: its llama.cpp name, where it lives, and its shape (rows × row length).
#[derive(Debug, Clone)]
pub struct WeightTensor {
    pub name: String,
    pub site: Site,
    pub rows: usize,
    pub cols: usize,
}

impl WeightTensor {
    /// Number of weights.
    pub fn elements(&self) -> usize {
        self.rows * self.cols
    }
}

/// Every weight matrix of `model` a quantization plan gives a type to, in file order.
pub fn weight_tensors(model: &Model) -> Vec<WeightTensor> {
    let llama = &model.llama;
    let (v, c) = (llama.config.vocab_size, llama.config.hidden_size);
    let mut out = vec![WeightTensor {
        name: "token_embd.weight".into(),
        site: Site::TokenEmbd,
        rows: v,
        cols: c,
    }];
    for (i, block) in llama.blocks.iter().enumerate() {
        for t in Target::ALL {
            let (rows, cols) = block.linear(t).dims();
            out.push(WeightTensor {
                name: format!("blk.{i}.{}.weight", t.gguf_part()),
                site: Site::Block(i, t),
                rows,
                cols,
            });
        }
    }
    if !llama.config.tie_word_embeddings {
        let (rows, cols) = llama.lm_head.dims();
        out.push(WeightTensor {
            name: "output.weight".into(),
            site: Site::Output,
            rows,
            cols,
        });
    }
    out
}

/// The weight at `site` as dense f32 values, row after row (dequantized when stored quantized).
pub fn dense_values(model: &Model, site: Site) -> Result<Vec<f32>> {
    let w = match site {
        Site::Block(i, t) => model.llama.blocks[i].linear(t).dense_weight()?,
        Site::TokenEmbd => model.llama.embed.to_dtype(DType::F32)?,
        Site::Output => model.llama.lm_head.dense_weight()?,
    };
    Ok(w.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?)
}

/// `values` (rows of `cols`) quantized to `ty` — with ggml's importance-weighted quantizers when
/// `importance` (one value per column) is given — and dequantized back.
pub fn round_trip(
    values: &[f32],
    cols: usize,
    ty: GgmlType,
    importance: Option<&[f32]>,
) -> Result<Vec<f32>> {
    if matches!(ty.name, "F32") {
        return Ok(values.to_vec());
    }
    let bytes = encode_weighted(values, cols, &ty, importance)?;
    let dtype = ty
        .to_candle()
        .ok_or_else(|| Error::msg(format!("candle cannot read {} blocks", ty.name)))?;
    let rows = values.len() / cols;
    let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
    let q = QTensor::new(storage, (rows, cols))?;
    Ok(q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?)
}

/// The ggml type a projection is stored in (F32/F16/BF16 for dense weights).
pub fn stored_type(lin: &Linear) -> GgmlType {
    let float = |d: DType| {
        let name = match d {
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            _ => "F32",
        };
        GgmlType::from_name(name).expect("a float type")
    };
    match &lin.weight {
        Weight::Quantized(m, _) => match m.as_ref() {
            candle_core::quantized::QMatMul::QTensor(q) => GgmlType::from_candle(q.dtype()),
            candle_core::quantized::QMatMul::Tensor(_) => float(DType::F32),
            candle_core::quantized::QMatMul::TensorF16(_) => float(DType::F16),
        },
        Weight::Dense(t) => float(t.dtype()),
    }
}

/// The type each weight of `model` is stored in, by llama.cpp name, where it is a quantized
/// type: re-quantizing a weight to the type it came in can be lossless, so a fair comparison
/// leaves that type out of that weight's candidates. A model read from a GGUF counts the file's
/// types even when loaded dequantized.
pub fn storage_types(model: &Model) -> HashMap<String, GgmlType> {
    let mut out = HashMap::new();
    if model.format == "gguf" {
        if let Ok(file) = crate::gguf::GgufReader::open(&model.source) {
            for t in file.tensors.iter().filter(|t| t.ne.len() >= 2) {
                out.insert(t.name.clone(), t.ggml_type);
            }
        }
    }
    // Weights quantized in memory (quantize(), or loaded with quantized: true) count too; a
    // dense weight does not hide the type its file stored it in.
    let mut add = |name: String, t: GgmlType| {
        if !matches!(t.name, "F32" | "F16" | "BF16") {
            out.insert(name, t);
        }
    };
    if let Some(t) = model.llama.embed_type {
        add("token_embd.weight".into(), GgmlType::from_candle(t));
    }
    for (i, block) in model.llama.blocks.iter().enumerate() {
        for t in Target::ALL {
            add(
                format!("blk.{i}.{}.weight", t.gguf_part()),
                stored_type(block.linear(t)),
            );
        }
    }
    if !model.llama.config.tie_word_embeddings {
        add("output.weight".into(), stored_type(&model.llama.lm_head));
    }
    out
}

/// A copy of `model` whose weight at `site` is `values` (dense f32); the rest is shared.
pub fn with_weight(model: &Model, site: Site, values: Vec<f32>) -> Result<Model> {
    let mut llama = model.llama.clone();
    let device = llama.device.clone();
    let dense = |rows: usize, cols: usize, values: Vec<f32>| -> Result<Tensor> {
        Ok(Tensor::from_vec(values, (rows, cols), &device)?)
    };
    match site {
        Site::Block(i, t) => {
            let lin = llama.blocks[i].linear_mut(t);
            let (rows, cols) = lin.dims();
            let bias = lin.bias.clone();
            *lin = Linear::dense(dense(rows, cols, values)?, bias);
        }
        Site::TokenEmbd => {
            let (v, c) = (llama.config.vocab_size, llama.config.hidden_size);
            let w = dense(v, c, values)?;
            if llama.config.tie_word_embeddings {
                llama.lm_head = Linear::dense(w.clone(), None);
            }
            llama.embed = w;
            llama.embed_type = None;
        }
        Site::Output => {
            let (rows, cols) = llama.lm_head.dims();
            llama.lm_head = Linear::dense(dense(rows, cols, values)?, None);
        }
    }
    Ok(Model::new(ModelParts {
        llama,
        ..(**model).clone()
    }))
}

/// A copy of `model` with every weight dense f32 (dequantized): the unquantized reference the
/// measures compare against, computed without any activation rounding.
pub fn dense_reference(model: &Model) -> Result<Model> {
    let mut llama = model.llama.clone();
    let f32 = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?) };
    for block in llama.blocks.iter_mut() {
        block.attn_norm = f32(&block.attn_norm)?;
        block.mlp_norm = f32(&block.mlp_norm)?;
        for t in Target::ALL {
            let lin = block.linear_mut(t);
            let w = lin.dense_weight()?;
            let bias = lin.bias.as_ref().map(f32).transpose()?;
            *lin = Linear::dense(w, bias);
        }
    }
    llama.embed = f32(&llama.embed)?;
    llama.embed_type = None;
    llama.lm_head = if llama.config.tie_word_embeddings {
        Linear::dense(llama.embed.clone(), None)
    } else {
        Linear::dense(llama.lm_head.dense_weight()?, None)
    };
    llama.norm = f32(&llama.norm)?;
    llama.dtype = DType::F32;
    Ok(Model::new(ModelParts {
        llama,
        quantized: false,
        ..(**model).clone()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_model_lists_every_projection_and_its_shape() {
        let model = crate::model::load("tiny", &Default::default()).unwrap();
        let tensors = weight_tensors(&model);
        let layers = model.config().num_hidden_layers;
        let tied = model.config().tie_word_embeddings;
        assert_eq!(tensors.len(), 1 + 7 * layers + usize::from(!tied));
        assert_eq!(tensors[0].name, "token_embd.weight");
        assert_eq!(tensors[1].name, "blk.0.attn_q.weight");
        for t in &tensors {
            assert_eq!(dense_values(&model, t.site).unwrap().len(), t.elements());
        }
    }

    #[test]
    fn a_replaced_weight_changes_only_that_weight() {
        let model =
            dense_reference(&crate::model::load("tiny", &Default::default()).unwrap()).unwrap();
        let site = Site::Block(0, Target::V);
        let values = dense_values(&model, site).unwrap();
        let q8 = GgmlType::from_name("Q8_0").unwrap();
        let cols = model.llama.blocks[0].linear(Target::V).dims().1;
        let rounded = round_trip(&values, cols, q8, None).unwrap();
        let err: f32 = values
            .iter()
            .zip(&rounded)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let scale = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            err > 0.0 && err < scale / 100.0,
            "Q8_0 error {err} of {scale}"
        );
        let changed = with_weight(&model, site, rounded.clone()).unwrap();
        assert_eq!(dense_values(&changed, site).unwrap(), rounded);
        let other = Site::Block(0, Target::Q);
        assert_eq!(
            dense_values(&changed, other).unwrap(),
            dense_values(&model, other).unwrap()
        );
    }
}
