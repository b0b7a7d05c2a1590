//! Merging an adapter into its base: each adapted projection becomes the dense weight
//! `W + s·B·A` (quantized weights are dequantized first), so the merged model runs without the
//! adapter at the base's speed and can be saved or exported like any model.

use super::adapter::Adapter;
use super::config::Target;
use crate::error::Result;
use crate::model::linear::Linear;
use crate::model::{Model, ModelParts};

/// A new model with `adapter` folded into the weights; `model` is unchanged.
pub fn merge(model: &Model, adapter: &Adapter) -> Result<Model> {
    adapter.check_fits(&model.llama, std::path::Path::new(&adapter.base_model))?;
    let mut llama = model.llama.clone();
    let scale = adapter.config.scale();
    let mut quantized_left = false;
    for (i, block) in llama.blocks.iter_mut().enumerate() {
        for t in Target::ALL {
            let lin = block.linear_mut(t);
            let Some(pair) = adapter.pair(i, t) else {
                quantized_left |= matches!(lin.weight, crate::model::linear::Weight::Quantized(..));
                continue;
            };
            let w = lin.dense_weight()?; // (out, in) f32
            let delta = (pair.b.as_tensor().matmul(pair.a.as_tensor())? * scale)?; // (out, in)
            let dtype = match &lin.weight {
                crate::model::linear::Weight::Dense(d) => d.dtype(),
                _ => candle_core::DType::F32,
            };
            *lin = Linear::dense((w + delta)?.to_dtype(dtype)?, lin.bias.clone());
        }
    }
    Ok(Model::new(ModelParts {
        llama,
        tokenizer: model.tokenizer.clone(),
        chat_template: model.chat_template.clone(),
        source: format!(
            "{} + LoRA (rank {}) merged",
            model.source, adapter.config.rank
        ),
        format: model.format,
        quantized: model.quantized && quantized_left,
        stop_ids: model.stop_ids.clone(),
        add_bos: model.add_bos,
        bos_token: model.bos_token.clone(),
        eos_token: model.eos_token.clone(),
    }))
}

/// `model` with `adapter` merged in, or `model` itself (a cheap clone) when there is none: what
/// every export writes.
pub fn merged_or_base(model: &Model, adapter: Option<&Adapter>) -> Result<Model> {
    match adapter {
        Some(a) => merge(model, a),
        None => Ok(model.clone()),
    }
}
