//! Frozen linear layers for training: `y = x Wᵀ` whose backward pass returns only the gradient of
//! `x`, never of `W`.
//!
//! candle's matmul backward always computes both operands' gradients, so a frozen base weight
//! would cost a full dW GEMM and an (out, in) buffer per use per step (specs/candle.md §2.3); and
//! its quantized matmul has no backward at all, which would stop the gradient before the earlier
//! layers' adapters. These two custom ops fix both: the dense one multiplies in place on the
//! device, the quantized one runs the same kernels as inference and differentiates through the
//! dequantized weight (QLoRA).
//!
//! Shapes: x (M, K) contiguous, W (N, K), y (M, N).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::QMatMul;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor};

/// `x Wᵀ` with a constant dense `W`.
struct DenseFrozen;

impl CustomOp2 for DenseFrozen {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = x_layout.shape().dims2()?;
        let (n, _) = w_layout.shape().dims2()?;
        let wt = w_layout.transpose(0, 1)?; // (K, N) view
        Ok((x.matmul(w, (1, m, n, k), x_layout, &wt)?, (m, n).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (m, k) = x_layout.shape().dims2()?;
        let (n, _) = w_layout.shape().dims2()?;
        let wt = w_layout.transpose(0, 1)?;
        Ok((x.matmul(w, (1, m, n, k), x_layout, &wt)?, (m, n).into()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None)) // (M, N)·(N, K) → (M, K)
    }
}

/// `x Wᵀ` for a frozen dense weight `w` (N, K); x is (M, K).
pub fn dense(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(w, DenseFrozen)
}

/// `x Wᵀ` with a constant quantized `W`.
struct QuantizedFrozen {
    matmul: Arc<QMatMul>,
    /// (N, K).
    shape: Shape,
}

impl CustomOp1 for QuantizedFrozen {
    fn name(&self) -> &'static str {
        "frozen-qmatmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // Run exactly the inference kernels (f32 activations where the format allows).
        let shape = layout.shape().clone();
        let data = x.as_slice::<f32>()?;
        let data = &data[layout.start_offset()..layout.start_offset() + shape.elem_count()];
        let input = Tensor::from_slice(data, shape, &candle_core::Device::Cpu)?;
        let y = super::linear::quantized_forward(&self.matmul, &self.shape, &input)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let dims = y.shape().clone();
        let (storage, y_layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) if y_layout.is_contiguous() && y_layout.start_offset() == 0 => {
                Ok((s.clone(), dims))
            }
            _ => candle_core::bail!("frozen-qmatmul: unexpected output layout"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self.matmul.as_ref() {
            QMatMul::QTensor(q) => q.cuda_fwd(x, layout),
            _ => candle_core::bail!("frozen-qmatmul: a dense weight on CUDA takes the dense path"),
        }
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let w = match self.matmul.as_ref() {
            QMatMul::QTensor(q) => q.dequantize(x.device())?, // (N, K)
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(grad.dtype())?,
        };
        Ok(Some(grad.matmul(&w)?))
    }
}

/// `x Wᵀ` for a frozen quantized weight; x is (M, K) f32.
pub fn quantized(x: &Tensor, matmul: &Arc<QMatMul>, shape: &Shape) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(QuantizedFrozen {
        matmul: matmul.clone(),
        shape: shape.clone(),
    })
}
