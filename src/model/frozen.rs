//! Frozen linear layers for training: `y = x Wᵀ` whose backward pass returns only the gradient of
//! `x`, and of a dense `W` only when it is being trained (a variable: full and freeze
//! fine-tuning).
//!
//! candle's matmul backward always computes both operands' gradients, so a frozen base weight
//! would cost a full dW GEMM and an (out, in) buffer per use per step (specs/candle.md §2.3); and
//! its quantized matmul has no backward at all, which would stop the gradient before the earlier
//! layers' adapters. These two custom ops fix both: the dense one multiplies in place on the
//! device, the quantized one runs the same kernels as inference and differentiates through the
//! dequantized weight (QLoRA).
//!
//! Products with a bf16 weight on CPUs with AVX512-BF16 run [`gemm_bf16`]'s kernel, forward and
//! backward, with f32 sums: from bf16 activations (rounded once to bf16 at the end) or from f32
//! ones (autocast: rounded to bf16 on the way in, the result left in f32).
//!
//! Shapes: x (M, K) contiguous, W (N, K), y (M, N).

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::quantized::QMatMul;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor};

use super::{gemm_bf16, low_rank_add};

/// A bf16 weight arranged for [`gemm_bf16`]: as Wᵀ for the forward product and as W for the
/// backward one, each built on first use. Shared by a layer's clones.
#[derive(Debug, Clone, Default)]
pub struct Bf16Packs(Arc<Bf16PacksInner>);

#[derive(Debug, Default)]
struct Bf16PacksInner {
    transposed: OnceLock<gemm_bf16::PackedB>,
    rows: OnceLock<gemm_bf16::PackedB>,
}

/// `x Wᵀ` with a constant dense `W`; a bf16 `W` packed once in `packs` (None: every call).
struct DenseFrozen {
    packs: Option<Bf16Packs>,
}

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
        if let Some(w) = bf16_weight(w, w_layout) {
            let kept = self.packs.as_ref().map(|p| &p.0.transposed);
            let y = packed_product(x, x_layout, m, kept, || {
                gemm_bf16::PackedB::transposed(w, n, k)
            });
            if let Some(y) = y {
                return Ok((y, (m, n).into()));
            }
        }
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
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = grad_times_weight(grad, w, self.packs.clone())?; // (M, N)·(N, K) → (M, K)
                                                                  // A weight being trained (full or freeze fine-tuning) is a variable: it gets dW = gᵀx.
        let dw = if w.is_variable() {
            // x detached: the result is a value, not a node that would hold the forward graph.
            Some(grad.t()?.matmul(&x.detach())?) // (N, M)·(M, K) → (N, K)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// A bf16 weight's values when the bf16 kernel applies (the CPU has AVX512-BF16 and the
/// weight is contiguous); None sends the product to candle's matmul.
fn bf16_weight<'a>(s: &'a CpuStorage, layout: &Layout) -> Option<&'a [half::bf16]> {
    match s {
        CpuStorage::BF16(v) if gemm_bf16::available() => {
            let (start, end) = layout.contiguous_offsets()?;
            Some(&v[start..end])
        }
        _ => None,
    }
}

/// `a · b` through the bf16 kernel for `m` contiguous rows `a` in bf16, or in f32 (autocast:
/// rounded to bf16 on the way in, the result kept in f32); the result in `a`'s dtype. None for
/// other dtypes or layouts.
fn bf16_product(
    a: &CpuStorage,
    layout: &Layout,
    m: usize,
    b: &gemm_bf16::PackedB,
) -> Option<CpuStorage> {
    let (start, end) = layout.contiguous_offsets()?;
    match a {
        CpuStorage::BF16(v) => Some(CpuStorage::BF16(gemm_bf16::matmul(&v[start..end], m, b))),
        CpuStorage::F32(v) => {
            let rounded = gemm_bf16::to_bf16(&v[start..end]);
            Some(CpuStorage::F32(gemm_bf16::matmul(&rounded, m, b)))
        }
        _ => None,
    }
}

/// [`bf16_product`] with B an arrangement of the weight: the one kept in `kept` (made there on
/// first use) or, without one, made by `arrange` for this call.
fn packed_product(
    a: &CpuStorage,
    layout: &Layout,
    m: usize,
    kept: Option<&OnceLock<gemm_bf16::PackedB>>,
    arrange: impl FnOnce() -> gemm_bf16::PackedB,
) -> Option<CpuStorage> {
    match kept {
        Some(cell) => bf16_product(a, layout, m, cell.get_or_init(arrange)),
        None => bf16_product(a, layout, m, &arrange()),
    }
}

/// `g W` for the backward pass: g (M, N), W (N, K).
struct GradTimesWeight {
    packs: Option<Bf16Packs>,
}

impl CustomOp2 for GradTimesWeight {
    fn name(&self) -> &'static str {
        "frozen-matmul-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        g_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n) = g_layout.shape().dims2()?;
        let (_, k) = w_layout.shape().dims2()?;
        let kept = self.packs.as_ref().map(|p| &p.0.rows);
        let product = bf16_weight(w, w_layout).and_then(|w| {
            packed_product(g, g_layout, m, kept, || gemm_bf16::PackedB::rows(w, n, k))
        });
        match product {
            Some(dx) => Ok((dx, (m, k).into())),
            None => candle_core::bail!(
                "frozen-matmul-grad: a bf16 weight on a CPU with AVX512-BF16 only"
            ),
        }
    }
}

/// `g W` through the bf16 kernel where it applies, else candle's matmul.
fn grad_times_weight(
    g: &Tensor,
    w: &Tensor,
    packs: Option<Bf16Packs>,
) -> candle_core::Result<Tensor> {
    use candle_core::DType::{BF16, F32};
    let kernel = g.device().is_cpu() && w.dtype() == BF16 && gemm_bf16::available();
    if kernel && matches!(g.dtype(), BF16 | F32) {
        g.contiguous()?
            .apply_op2_no_bwd(&w.contiguous()?, &GradTimesWeight { packs })
    } else {
        g.matmul(w)
    }
}

/// `x Wᵀ` for a dense weight `w` (N, K); x is (M, K). The weight's gradient is computed only
/// when `w` is a variable (a weight being trained); otherwise it is frozen and costs nothing. A
/// bf16 weight's arrangements for the kernel are kept in `packs` (the layer's own), built once
/// instead of every call; a weight being trained is never cached.
pub fn dense(x: &Tensor, w: &Tensor, packs: &Bf16Packs) -> candle_core::Result<Tensor> {
    let packs = (!w.is_variable() && w.dtype() == candle_core::DType::BF16).then(|| packs.clone());
    x.contiguous()?.apply_op2(w, DenseFrozen { packs })
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
        let y = super::linear::quantized_forward(&self.matmul, &self.shape, &input, None)
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

/// `x Wᵀ + s·(x Aᵀ) Bᵀ`: a frozen dense weight plus its LoRA update in one op, so the update
/// adds no (M, N) temporaries and no extra graph nodes; the backward pass returns the gradients
/// of x, A and B (never of W). A bf16 W (autocast: x, A and B f32) runs the bf16 kernel with the
/// layer's `packs`, forward and backward.
struct DenseLora {
    w: Tensor,
    scale: f64,
    packs: Option<Bf16Packs>,
}

impl candle_core::CustomOp3 for DenseLora {
    fn name(&self) -> &'static str {
        "frozen-matmul-lora"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = x_layout.shape().dims2()?;
        let (r, a_k) = a_layout.shape().dims2()?;
        let (n, b_r) = b_layout.shape().dims2()?;
        if a_k != k || b_r != r || self.w.dims() != [n, k] {
            candle_core::bail!(
                "frozen-matmul-lora: x {:?}, A {:?}, B {:?} and W {:?} do not fit",
                x_layout.dims(),
                a_layout.dims(),
                b_layout.dims(),
                self.w.dims()
            )
        }
        let (w_storage, w_layout) = self.w.storage_and_layout();
        let Storage::Cpu(w) = &*w_storage else {
            candle_core::bail!("frozen-matmul-lora: the weight is not on the CPU")
        };
        let y = match bf16_weight(w, w_layout) {
            Some(w) => {
                let kept = self.packs.as_ref().map(|p| &p.0.transposed);
                packed_product(x, x_layout, m, kept, || {
                    gemm_bf16::PackedB::transposed(w, n, k)
                })
                .ok_or_else(|| {
                    candle_core::Error::Msg("frozen-matmul-lora: x must be contiguous f32".into())
                })?
            }
            None => x.matmul(w, (1, m, n, k), x_layout, &w_layout.transpose(0, 1)?)?, // (M, N)
        };
        let low = x.matmul(a, (1, m, r, k), x_layout, &a_layout.transpose(0, 1)?)?; // (M, r)
        let (CpuStorage::F32(mut y), CpuStorage::F32(low), CpuStorage::F32(b)) = (y, low, b) else {
            candle_core::bail!("frozen-matmul-lora: f32 only")
        };
        // y += s · low · Bᵀ in place; Bᵀ (r, N) is r·N values, copied.
        let (stride, start) = (b_layout.stride(), b_layout.start_offset());
        let bt: Vec<f32> = (0..r)
            .flat_map(|j| (0..n).map(move |i| (i, j)))
            .map(|(i, j)| b[start + i * stride[0] + j * stride[1]])
            .collect();
        low_rank_add::add_low_rank(&mut y, &low, &bt, r, self.scale as f32);
        Ok((CpuStorage::F32(y), (m, n).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let gb = (grad.matmul(&b)? * self.scale)?; // (M, r)
        let dx = grad_times_weight_plus(grad, &self.w, self.packs.as_ref(), &gb, &a)?; // (M, K)
        let da = gb.t()?.matmul(&x)?; // (r, K)
        let low = (x.matmul(&a.t()?)? * self.scale)?; // (M, r)
        let db = grad.t()?.matmul(&low)?; // (N, r)
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// `g W + u v` for the LoRA layer's backward pass: g (M, N), W (N, K), u (M, r), v (r, K). On
/// the CPU with f32 `g` the low-rank part is added in place to the frozen product's own buffer
/// (no (M, K) temporary, no separate addition); elsewhere the two are composed.
fn grad_times_weight_plus(
    g: &Tensor,
    w: &Tensor,
    packs: Option<&Bf16Packs>,
    u: &Tensor,
    v: &Tensor,
) -> candle_core::Result<Tensor> {
    let (m, n) = g.dims2()?;
    let (_, k) = w.dims2()?;
    let (r, _) = v.dims2()?;
    if w.dims() != [n, k] || u.dims() != [m, r] || v.dims() != [r, k] {
        candle_core::bail!(
            "frozen-matmul-lora backward: g {:?}, W {:?}, u {:?} and v {:?} do not fit",
            g.dims(),
            w.dims(),
            u.dims(),
            v.dims()
        )
    }
    let in_place = g.device().is_cpu() && g.dtype() == candle_core::DType::F32;
    if !in_place {
        return grad_times_weight(g, w, packs.cloned())? + u.matmul(v)?;
    }
    let g = g.contiguous()?;
    let product = {
        let (g_storage, g_layout) = g.storage_and_layout();
        let (w_storage, w_layout) = w.storage_and_layout();
        let (Storage::Cpu(gs), Storage::Cpu(ws)) = (&*g_storage, &*w_storage) else {
            candle_core::bail!("frozen-matmul-lora: tensors not on the CPU")
        };
        let kept = packs.map(|p| &p.0.rows);
        let kernel = bf16_weight(ws, w_layout).and_then(|wv| {
            packed_product(gs, g_layout, m, kept, || gemm_bf16::PackedB::rows(wv, n, k))
        });
        match (kernel, ws) {
            (Some(product), _) => Some(product),
            // (M, N)·(N, K) by candle's CPU matmul, into a buffer this function owns.
            (None, CpuStorage::F32(_)) => Some(gs.matmul(ws, (1, m, k, n), g_layout, w_layout)?),
            (None, _) => None,
        }
    };
    let Some(CpuStorage::F32(mut dx)) = product else {
        // Another weight dtype without the bf16 kernel: composed.
        return grad_times_weight(&g, w, packs.cloned())? + u.matmul(v)?;
    };
    let u = u.flatten_all()?.to_vec1::<f32>()?;
    let v = v.flatten_all()?.to_vec1::<f32>()?;
    low_rank_add::add_low_rank(&mut dx, &u, &v, r, 1.0);
    Tensor::from_vec(dx, (m, k), g.device())
}

/// `x Wᵀ + scale·(x Aᵀ) Bᵀ` for a frozen dense `w` (N, K) on the CPU, f32 or — on a CPU with
/// AVX512-BF16, its arrangements kept in `packs` — bf16; x (M, K), a (r, K), b (N, r) f32.
/// None when the fused op does not apply (another device or dtype).
pub fn dense_lora(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    packs: &Bf16Packs,
) -> candle_core::Result<Option<Tensor>> {
    use candle_core::DType::{BF16, F32};
    let bf16 = w.dtype() == BF16 && gemm_bf16::available() && w.is_contiguous();
    if !x.device().is_cpu()
        || [x, a, b].iter().any(|t| t.dtype() != F32)
        || !(w.dtype() == F32 || bf16)
    {
        return Ok(None);
    }
    let op = DenseLora {
        w: w.clone(),
        scale,
        packs: bf16.then(|| packs.clone()),
    };
    Ok(Some(x.contiguous()?.apply_op3(a, b, op)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::model::max_abs_diff as max_diff;

    #[test]
    fn fused_lora_matches_the_composed_layer_with_gradients() {
        let dev = Device::Cpu;
        // 37 rows: more than one parallel task of the in-place low-rank update.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (37, 8), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 0.5, (5, 8), &dev).unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.5, (3, 8), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, (5, 3), &dev).unwrap()).unwrap();
        let c = Tensor::randn(0f32, 1.0, (37, 5), &dev).unwrap();
        // The fused layer against the composed one (`base`: the frozen product), values and
        // the gradients of x, A and B.
        let check = |w: &Tensor, base: Tensor, what: &str| {
            let fused = dense_lora(&x, w, &a, &b, 2.0, &Bf16Packs::default())
                .unwrap()
                .unwrap();
            let low = (x.matmul(&a.t().unwrap()).unwrap() * 2.0).unwrap();
            let reference = (base + low.matmul(&b.t().unwrap()).unwrap()).unwrap();
            assert!(max_diff(&fused, &reference) < 1e-5, "{what}: values");
            let backward = |y: &Tensor| (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let (gf, gr) = (backward(&fused), backward(&reference));
            for v in [&x, &a, &b] {
                let d = max_diff(gf.get(v).unwrap(), gr.get(v).unwrap());
                assert!(d < 1e-4, "{what}: gradient differs by {d}");
            }
        };
        check(&w, x.matmul(&w.t().unwrap()).unwrap(), "f32");
        // An f32 weight that is a transposed view (strided, not contiguous).
        let w_view = w.t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(!w_view.is_contiguous());
        check(
            &w_view,
            x.matmul(&w.t().unwrap()).unwrap(),
            "f32, strided weight",
        );
        // B as a strided view (the transpose of a (r, N) variable): the forward pass reads it
        // by its strides, and its gradient reaches the variable.
        let bt = Var::from_tensor(&b.t().unwrap().contiguous().unwrap()).unwrap();
        let b_view = bt.t().unwrap();
        assert!(!b_view.is_contiguous());
        let fused = dense_lora(&x, &w, &a, &b_view, 2.0, &Bf16Packs::default())
            .unwrap()
            .unwrap();
        let low = (x.matmul(&a.t().unwrap()).unwrap() * 2.0).unwrap();
        let reference = (x.matmul(&w.t().unwrap()).unwrap() + low.matmul(&bt).unwrap()).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5, "strided B: values");
        let backward = |y: &Tensor| (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gr) = (backward(&fused), backward(&reference));
        assert!(
            max_diff(gf.get(&bt).unwrap(), gr.get(&bt).unwrap()) < 1e-4,
            "strided B: gradient"
        );
        // A bf16 weight under autocast (f32 x, A, B): the bf16 kernel's product plus the f32
        // update.
        if gemm_bf16::available() {
            let wb = w.to_dtype(candle_core::DType::BF16).unwrap();
            check(&wb, dense(&x, &wb, &Bf16Packs::default()).unwrap(), "bf16");
        }
        // The dense frozen product alone: the same values, and only x gets a gradient.
        let y = dense(&x, &w, &Bf16Packs::default()).unwrap();
        assert!(max_diff(&y, &x.matmul(&w.t().unwrap()).unwrap()) < 1e-5);
    }
}
