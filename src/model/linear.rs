//! Linear layers with a pluggable weight: dense (f32/bf16/f16) or quantized (GGUF blocks), each
//! with an optional bias. LoRA wraps one of these (training issue).
//!
//! Quantized weights in the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) on the CPU are
//! multiplied with f32 activations: few rows (generation) through the fused kernel in
//! [`crate::ggml::matvec`], many rows (a prompt) by dequantizing the weight and using the f32
//! GEMM. Q4_0/Q4_1/Q8_0 on CPUs with AVX-512 VNNI take the interleaved kernel
//! ([`crate::ggml::interleaved`], activations rounded to 16 bits) for up to 128 rows instead,
//! which decodes each block once for 16 rows and so beats the GEMM on short prompts too. Other
//! formats (K-quants) and other devices use candle's `QMatMul`, which rounds the activations to 8
//! bits first.
//!
//! Shapes: weight (out, in); `forward` maps (…, in) → (…, out).

use std::sync::{Arc, OnceLock};

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::error::Result;
use crate::ggml::act_round::InputRounding;
use crate::ggml::blocks::Format;
use crate::ggml::interleaved::{self, Interleaved};
use crate::ggml::matvec;

/// Up to this many activation rows go through the fused kernel; more are a GEMM on the
/// dequantized weight (where the blocked f32 GEMM is faster than decoding per row).
pub(crate) const FUSED_MAX_ROWS: usize = 16;

/// Up to this many rows go through the interleaved kernel where the weight has one: it decodes
/// each block once for 16 rows, so it is faster than dequantize-then-GEMM for prompts too.
const INTERLEAVED_MAX_ROWS: usize = 128;

/// A quantized weight's row-interleaved copy for generation ([`crate::ggml::interleaved`]),
/// built on first use; None inside when the format or shape has none.
pub type InterleavedCache = Arc<OnceLock<Option<Interleaved>>>;

/// (…, in) × quantized (out, in)ᵀ, keeping activations in f32 where the format allows — or, for
/// few rows of Q4_0/Q4_1/Q8_0 on CPUs with AVX-512 VNNI and an `interleaved` cache to hold the
/// rearranged weights, rounded to 16 bits.
pub(crate) fn quantized_forward(
    m: &QMatMul,
    shape: &candle_core::Shape,
    x: &Tensor,
    interleaved: Option<&InterleavedCache>,
) -> Result<Tensor> {
    let q = match m {
        QMatMul::QTensor(q) => q,
        _ => return Ok(m.forward(x)?),
    };
    let format = match Format::of(q.dtype()) {
        Some(f) if x.device().is_cpu() && x.dtype() == DType::F32 => f,
        _ => return Ok(m.forward(x)?),
    };
    let (n, k) = shape.dims2()?;
    let mut out_dims = x.dims().to_vec();
    let rows = x.elem_count() / k;
    let data = q.data()?;
    let fast = interleaved
        .filter(|_| {
            rows <= INTERLEAVED_MAX_ROWS
                && interleaved::supports(format, n, k)
                && interleaved::fast_kernel_available()
        })
        .and_then(|cache| {
            cache
                .get_or_init(|| interleaved::interleave(format, &data, n, k))
                .as_ref()
        });
    if fast.is_none() && rows > FUSED_MAX_ROWS {
        let w = q.dequantize(x.device())?; // (out, in)
        return Ok(x.reshape((rows, k))?.matmul(&w.t()?)?.reshape(
            out_dims
                .iter()
                .take(out_dims.len() - 1)
                .copied()
                .chain([n])
                .collect::<Vec<_>>(),
        )?);
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let y = match fast {
        Some(w) => interleaved::matmul(w, &xs, rows),
        None => matvec::matmul(format, &data, n, k, &xs, rows),
    };
    *out_dims.last_mut().expect("rank ≥ 1") = n;
    Ok(Tensor::from_vec(y, out_dims, x.device())?)
}

/// (…, in) × quantized (out, in)ᵀ with llama.cpp's activation rounding
/// ([`crate::ggml::ggml_matmul`]) on the CPU; candle's quantized matmul elsewhere.
fn ggml_forward(m: &QMatMul, x: &Tensor) -> Result<Tensor> {
    if let QMatMul::QTensor(q) = m {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let (n, k) = q.shape().dims2()?;
            let rows = x.elem_count() / k;
            let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
            if let Some(y) = crate::ggml::ggml_matmul::matmul(q, &xs, rows)? {
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("rank ≥ 1") = n;
                return Ok(Tensor::from_vec(y, dims, x.device())?);
            }
        }
    }
    Ok(m.forward(x)?)
}

/// Whether ggml's integer kernels compute the product of `m` under rounding `r` (on the CPU).
fn ggml_kernel_for(r: &InputRounding, m: &QMatMul) -> bool {
    matches!(m, QMatMul::QTensor(q) if q.device().is_cpu() && r.uses_ggml_kernel(q.dtype()))
}

/// `x` (…, in) rounded as `r` asks, in its own dtype and device.
fn round_input(r: &InputRounding, x: &Tensor) -> Result<Tensor> {
    if r.granularity == crate::ggml::act_round::Granularity::WeightPartner {
        return Ok(x.clone()); // llama.cpp keeps a dense weight's input in f32
    }
    let k = x.dims().last().copied().unwrap_or(1);
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let y = r.round(&xs, k);
    Ok(Tensor::from_vec(y, x.dims(), &candle_core::Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?)
}

/// Whether `x · wᵀ` is a generation-sized product of f32 tensors on the CPU (few rows, no
/// gradient to track), which [`dense_few_rows`] computes faster than the GEMM.
fn few_rows_f32(w: &Tensor, x: &Tensor) -> bool {
    let k = w.dims().last().copied().unwrap_or(1).max(1);
    w.device().is_cpu()
        && w.dtype() == DType::F32
        && x.dtype() == DType::F32
        && !w.is_variable()
        && w.is_contiguous()
        && x.elem_count() / k <= FUSED_MAX_ROWS
}

/// (…, in) × (out, in)ᵀ by one dot product per weight row ([`super::matvec_f32`]).
fn dense_few_rows(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let rows = x.elem_count() / k;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        unreachable!("few_rows_f32 checked the device")
    };
    let data = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + n * k];
    let y = super::matvec_f32::matmul(data, n, k, &xs, rows);
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = n;
    Ok(Tensor::from_vec(y, dims, x.device())?)
}

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
    /// At inference, round the input to a few bits before the product (the quantization lab's
    /// activation quantization, [`crate::ggml::act_round`]); where the rounding is llama.cpp's own
    /// for a quantized weight, ggml's integer kernels compute it ([`crate::ggml::ggml_matmul`]).
    /// None (the default): inputs stay f32.
    pub input_rounding: Option<Arc<InputRounding>>,
    /// Quantized weights: their interleaved copy for generation, shared by clones.
    pub interleaved: InterleavedCache,
    /// bf16 weights on a CPU with AVX512-BF16: the two arrangements the bf16 kernel reads, built
    /// on first use and shared by clones.
    pub bf16_packs: super::frozen::Bf16Packs,
}

impl Linear {
    /// A dense layer.
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight: Weight::Dense(weight),
            bias,
            input_rounding: None,
            interleaved: Default::default(),
            bf16_packs: Default::default(),
        }
    }

    /// A quantized layer over `qtensor` (out, in).
    pub fn quantized(qtensor: QTensor, bias: Option<Tensor>) -> Result<Self> {
        let shape = qtensor.shape().clone();
        let matmul = QMatMul::from_arc(Arc::new(qtensor))?;
        Ok(Linear {
            weight: Weight::Quantized(Arc::new(matmul), shape),
            bias,
            input_rounding: None,
            interleaved: Default::default(),
            bf16_packs: Default::default(),
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

    /// (…, in) → (…, out) for training: the same product, but its backward pass computes only the
    /// input's gradient (the weight is frozen), and works through quantized weights too.
    pub fn forward_frozen(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (n, k) = self.dims();
        let rows = x.elem_count() / k;
        let x2 = x.reshape((rows, k))?;
        let y = match &self.weight {
            Weight::Dense(w) => super::frozen::dense(&x2, w, &self.bf16_packs)?,
            Weight::Quantized(m, shape) => super::frozen::quantized(&x2, m, shape)?,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank ≥ 1") = n;
        let y = y.reshape(out_dims)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// (…, in) → (…, out) from plain candle operations, so a dense weight held in a
    /// [`candle_core::Var`] gets its gradient (quantized weights stay frozen).
    pub fn forward_differentiable(&self, x: &Tensor) -> Result<Tensor> {
        let Weight::Dense(w) = &self.weight else {
            return self.forward_frozen(x);
        };
        let (n, k) = self.dims();
        let mut out_dims = x.dims().to_vec();
        *out_dims.last_mut().expect("rank ≥ 1") = n;
        let y = x
            .reshape((x.elem_count() / k, k))?
            .matmul(&w.t()?)?
            .reshape(out_dims)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// [`Linear::forward_frozen`] plus a LoRA update `scale·(x Aᵀ) Bᵀ`, fused when the weight is
    /// dense f32 on the CPU (None otherwise: the caller adds the update itself).
    pub fn forward_frozen_lora(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
    ) -> Result<Option<Tensor>> {
        let Weight::Dense(w) = &self.weight else {
            return Ok(None);
        };
        let dims = x.dims().to_vec();
        let (n, k) = self.dims();
        let x2 = x.reshape((x.elem_count() / k, k))?;
        let Some(y) = super::frozen::dense_lora(&x2, w, a, b, scale, &self.bf16_packs)? else {
            return Ok(None);
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank ≥ 1") = n;
        let y = y.reshape(out_dims)?;
        Ok(Some(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        }))
    }

    /// (…, in) → (…, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rounded;
        let x = match &self.input_rounding {
            Some(r) => match &self.weight {
                Weight::Quantized(m, _) if ggml_kernel_for(r, m) => {
                    let y = ggml_forward(m, x)?;
                    return Ok(match &self.bias {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    });
                }
                _ => {
                    rounded = round_input(r, x)?;
                    &rounded
                }
            },
            None => x,
        };
        let y = match &self.weight {
            Weight::Dense(w) if few_rows_f32(w, x) => dense_few_rows(w, x)?,
            // bf16 weights, f32 activations (autocast): the bf16 kernel.
            Weight::Dense(w) if w.dtype() != x.dtype() => return self.forward_frozen(x),
            Weight::Dense(w) => {
                // One 2-D product over all rows (not a batched one with a broadcast weight).
                let (n, k) = self.dims();
                let mut out_dims = x.dims().to_vec();
                *out_dims.last_mut().expect("rank ≥ 1") = n;
                x.reshape((x.elem_count() / k, k))?
                    .matmul(&w.t()?)?
                    .reshape(out_dims)?
            }
            Weight::Quantized(m, shape) => quantized_forward(m, shape, x, Some(&self.interleaved))?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
