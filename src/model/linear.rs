//! Linear layers with a pluggable weight: dense (f32/bf16/f16) or quantized (GGUF blocks through
//! candle's `QMatMul`), each with an optional bias. LoRA wraps one of these (training issue).
//!
//! Shapes: weight (out, in); `forward` maps (…, in) → (…, out).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::error::Result;

/// Where the weight lives.
#[derive(Debug, Clone)]
pub enum Weight {
    /// A plain tensor (out, in).
    Dense(Tensor),
    /// GGUF blocks, multiplied without dequantizing.
    Quantized(Arc<QMatMul>, candle_core::Shape),
}

/// `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A dense layer.
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight: Weight::Dense(weight),
            bias,
        }
    }

    /// A quantized layer over `qtensor` (out, in).
    pub fn quantized(qtensor: QTensor, bias: Option<Tensor>) -> Result<Self> {
        let shape = qtensor.shape().clone();
        let matmul = QMatMul::from_arc(Arc::new(qtensor))?;
        Ok(Linear {
            weight: Weight::Quantized(Arc::new(matmul), shape),
            bias,
        })
    }

    /// (out, in).
    pub fn dims(&self) -> (usize, usize) {
        let dims = match &self.weight {
            Weight::Dense(w) => w.dims().to_vec(),
            Weight::Quantized(_, shape) => shape.dims().to_vec(),
        };
        (dims[0], dims[1])
    }

    /// The weight as a dense f32 tensor (dequantized when needed).
    pub fn dense_weight(&self) -> Result<Tensor> {
        Ok(match &self.weight {
            Weight::Dense(w) => w.to_dtype(DType::F32)?,
            Weight::Quantized(m, _) => match m.as_ref() {
                QMatMul::QTensor(q) => q.dequantize(&q.device())?,
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(DType::F32)?,
            },
        })
    }

    /// (…, in) → (…, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => {
                let w = if x.rank() == 3 {
                    let b = x.dim(0)?;
                    w.broadcast_left(b)?.t()?
                } else {
                    w.t()?
                };
                x.matmul(&w)?
            }
            Weight::Quantized(m, _) => m.forward(x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
