//! Quantizing a loaded model in memory: every weight goes through the same plan and the same
//! quantizers as a GGUF export ([`crate::gguf::export`]), and comes back as ggml blocks that the
//! quantized matmul runs on — so `quantize(model, "Q4_K_M")` answers, and scores, as the exported
//! file loaded with `quantized: true` does, without writing it.
//!
//! Block quantization works row by row, so quantizing the Hugging Face row order gives the same
//! blocks as llama.cpp's permuted q/k rows, only in another order. The token embedding is
//! quantized too and kept dequantized for the lookup (llama.cpp reads rows of the quantized
//! table, which gives the same values); 1-D tensors and norms stay F32.

use std::borrow::Cow;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use super::plan::QuantPlan;
use crate::error::{Error, Result};
use crate::gguf::export::encode_weighted;
use crate::gguf::GgmlType;
use crate::lora::config::Target;
use crate::model::linear::Linear;
use crate::model::{Model, ModelParts};

/// `w` (rows, cols) as a tensor of ggml type `ty`, on the CPU, quantized with the plan's
/// importance matrix when it has one.
fn to_blocks(w: &Tensor, ty: GgmlType, name: &str, plan: &QuantPlan) -> Result<QTensor> {
    let (rows, cols) = w.dims2()?;
    let values: Vec<f32> = w
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let importance = plan
        .importance_for(name, cols, &ty)
        .map_err(|e| Error::msg(format!("quantize: {e}")))?;
    let bytes = encode_weighted(&values, cols, &ty, importance)
        .map_err(|e| Error::msg(format!("quantize: tensor {name}: {e}")))?;
    let dtype = ty
        .to_candle()
        .ok_or_else(|| Error::msg(format!("quantize: {name}: candle cannot run {}", ty.name)))?;
    let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// `q` moved to `device`, block for block.
fn on_device(q: QTensor, device: &Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(q);
    }
    let storage = QStorage::from_data(q.data()?, device, q.dtype())?;
    Ok(QTensor::new(storage, q.shape().clone())?)
}

/// A copy of `model` with its weights quantized as `plan` says; `model` is unchanged.
pub fn quantize_model(model: &Model, plan: &QuantPlan) -> Result<Model> {
    let c = model.config();
    let (shape, tied) = (super::plan::shape_of(c), c.tie_word_embeddings);
    let device = model.llama.device.clone();
    let type_of = |name: &str, w: &Tensor| -> Result<GgmlType> {
        let (rows, cols) = w.dims2()?;
        Ok(plan.tensor_type(name, &[cols as u64, rows as u64], &shape))
    };
    let mut llama = model.llama.clone();
    let f32 = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?) };
    for (i, block) in llama.blocks.iter_mut().enumerate() {
        block.attn_norm = f32(&block.attn_norm)?;
        block.mlp_norm = f32(&block.mlp_norm)?;
        for t in Target::ALL {
            let lin = block.linear_mut(t);
            let name = format!("blk.{i}.{}.weight", t.gguf_part());
            let w = lin.dense_weight()?;
            let q = to_blocks(&w, type_of(&name, &w)?, &name, plan)?;
            let bias = lin.bias.as_ref().map(f32).transpose()?;
            *lin = Linear::quantized(on_device(q, &device)?, bias)?;
        }
    }
    let embed_w = f32(&model.llama.embed)?;
    let embed_q = to_blocks(
        &embed_w,
        type_of("token_embd.weight", &embed_w)?,
        "token_embd.weight",
        plan,
    )?;
    llama.embed = embed_q.dequantize(&Device::Cpu)?.to_device(&device)?;
    llama.embed_type = Some(embed_q.dtype());
    llama.lm_head = if tied {
        Linear::quantized(on_device(embed_q, &device)?, None)?
    } else {
        let w = model.llama.lm_head.dense_weight()?;
        let q = to_blocks(&w, type_of("output.weight", &w)?, "output.weight", plan)?;
        Linear::quantized(on_device(q, &device)?, None)?
    };
    llama.norm = f32(&llama.norm)?;
    llama.dtype = DType::F32;
    Ok(Model::new(ModelParts {
        llama,
        quantized: true,
        ..(**model).clone()
    }))
}
