//! Fused training ops with hand-written backward passes, for the CPU: RMSNorm (frozen weight),
//! the attention softmax (scale, additive mask and softmax in one pass), rotary embeddings,
//! SwiGLU (`silu(gate) · up`) and the token cross-entropy.
//!
//! Beyond memory passes, every op in candle's autograd graph costs a zero-filled gradient buffer
//! and an addition per input in the backward pass, so fewer, bigger ops train faster.
//!
//! Composed from candle's primitives, each of these keeps 5–7 full-size temporaries alive for
//! the backward pass and runs as many passes over memory; fused, each keeps only its output and
//! runs one pass forward and one backward. The references are candle's composed versions
//! (`rms_norm_slow`, `ops::softmax`); the tests below check the fused ops against them, values
//! and gradients. On a GPU all but the cross-entropy have CUDA twins ([`super::fused_cuda`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::vec_exp;

/// The contiguous f32 slice a layout describes, or an error naming the op.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous f32"),
    }
}

/// `y = x / √(mean(x²) + eps) · w` over the last dimension; w is frozen.
struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let n = self.weight.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(y, x)| {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / n as f32;
            let r = 1.0 / (ms + self.eps).sqrt();
            for ((y, x), w) in y.iter_mut().zip(x).zip(&self.weight) {
                *y = x * r * w;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = RmsNormBackward {
            weight: self.weight.clone(),
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &back)?))
    }
}

/// dx = r·(g∘w) − x·r³·mean(g∘w∘x), with r = 1/√(mean(x²) + eps).
struct RmsNormBackward {
    weight: Vec<f32>,
    eps: f32,
}

impl CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let n = self.weight.len();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(n)
            .zip(x.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(|(dx, (x, g))| {
                let ms = x.iter().map(|v| v * v).sum::<f32>() / n as f32;
                let r = 1.0 / (ms + self.eps).sqrt();
                let dot: f32 = g
                    .iter()
                    .zip(&self.weight)
                    .zip(x)
                    .map(|((g, w), x)| g * w * x)
                    .sum();
                let c = r * r * r * dot / n as f32;
                for (((d, g), w), x) in dx.iter_mut().zip(g).zip(&self.weight).zip(x) {
                    *d = r * g * w - c * x;
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// RMSNorm of `x` (…, C) with the frozen weight `w` (C): fused on the CPU for f32.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::fused_cuda::applies(x) {
        return super::fused_cuda::rms_norm(x, w, eps);
    }
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return candle_nn::ops::rms_norm_slow(x, w, eps);
    }
    let weight: Vec<f32> = w.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    x.contiguous()?.apply_op1(RmsNorm { weight, eps })
}

/// Which row of a per-position table (T rows, or B·T with one block per batch entry) serves row
/// `row` of a (B, H, T, ·) tensor.
#[derive(Clone, Copy)]
struct TableRows {
    t: usize,
    heads: usize,
    per_batch: bool,
}

impl TableRows {
    fn of(&self, row: usize) -> usize {
        let t = row % self.t;
        if self.per_batch {
            row / (self.t * self.heads) * self.t + t
        } else {
            t
        }
    }
}

/// `softmax(scores · scale + mask)` over the last dimension. scores (B, H, T, S); mask (Bm, 1, T,
/// S) with Bm 1 or B.
struct MaskedSoftmax {
    scale: f32,
    mask: Vec<f32>,
    rows: TableRows,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let cols = l.shape().dims()[l.shape().rank() - 1];
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .enumerate()
            .for_each(|(row, (y, x))| {
                let m = self.rows.of(row);
                let mask = &self.mask[m * cols..(m + 1) * cols];
                let mut max = f32::NEG_INFINITY;
                for ((y, x), m) in y.iter_mut().zip(x).zip(mask) {
                    *y = x * self.scale + m;
                    max = max.max(*y);
                }
                let sum = vec_exp::exp_shifted_sum(y, max);
                let inv = 1.0 / sum;
                for y in y.iter_mut() {
                    *y *= inv;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = SoftmaxBackward { scale: self.scale };
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &back)?))
    }
}

/// d = scale · y ∘ (g − Σ g∘y), row by row.
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-masked-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let cols = l1.shape().dims()[l1.shape().rank() - 1];
        let mut d = vec![0f32; y.len()];
        d.par_chunks_mut(cols)
            .zip(y.par_chunks(cols).zip(g.par_chunks(cols)))
            .for_each(|(d, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for ((d, y), g) in d.iter_mut().zip(y).zip(g) {
                    *d = self.scale * y * (g - dot);
                }
            });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// `softmax(scores · scale + mask)`: scores (B, H, T, S), mask (Bm, 1, T, S) with Bm ∈ {1, B}.
pub fn masked_softmax(scores: &Tensor, scale: f64, mask: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::fused_cuda::applies(scores) {
        return super::fused_cuda::masked_softmax(scores, scale, mask);
    }
    let (b, h, t, s) = scores.dims4()?;
    let (bm, _, mt, ms) = mask.dims4()?;
    if !scores.device().is_cpu()
        || scores.dtype() != candle_core::DType::F32
        || (bm != 1 && bm != b)
        || mt != t
        || ms != s
    {
        let x = (scores * scale)?.broadcast_add(mask)?;
        return candle_nn::ops::softmax(&x, candle_core::D::Minus1);
    }
    let mask: Vec<f32> = mask
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    scores.contiguous()?.apply_op1(MaskedSoftmax {
        scale: scale as f32,
        mask,
        rows: TableRows {
            t,
            heads: h,
            per_batch: bm == b && b > 1,
        },
    })
}

/// Rotate-half RoPE of x (B, H, T, D) by per-row tables cos/sin (Bt, T, D/2) with Bt ∈ {1, B}.
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    rows: TableRows,
    /// The backward pass rotates by the opposite angle.
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = l.shape().dims()[3];
        let half = d / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each(|(row, (y, x))| {
                let r = self.rows.of(row);
                let (cos, sin) = (
                    &self.cos[r * half..(r + 1) * half],
                    &self.sin[r * half..(r + 1) * half],
                );
                for i in 0..half {
                    let (c, s) = (cos[i], sign * sin[i]);
                    y[i] = x[i] * c - x[i + half] * s;
                    y[i + half] = x[i + half] * c + x[i] * s;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            rows: self.rows,
            inverse: !self.inverse,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// RoPE (rotate-half) of `x` (B, H, T, D) by tables cos/sin that broadcast as (B|1, 1, T, D/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::fused_cuda::applies(x) {
        return super::fused_cuda::rope(x, cos, sin);
    }
    let (b, h, t, d) = x.dims4()?;
    let rows = cos.elem_count() / (d / 2);
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || (rows != t && rows != b * t)
    {
        return Err(candle_core::Error::Msg(
            "fused rope: use the reference".into(),
        ));
    }
    let f = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
        t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()
    };
    x.contiguous()?.apply_op1(Rope {
        cos: f(cos)?,
        sin: f(sin)?,
        rows: TableRows {
            t,
            heads: h,
            per_batch: rows == b * t && b > 1,
        },
        inverse: false,
    })
}

/// `silu(gate) · up`, element-wise.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = slice(s1, l1, self.name())?;
        let up = slice(s2, l2, self.name())?;
        let mut y = vec![0f32; gate.len()];
        y.par_chunks_mut(4096)
            .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
            .for_each(|(y, (g, u))| vec_exp::swiglu(y, g, u));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBackward)?; // (2, …)
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// (d gate, d up) = (g · up · silu'(gate), g · silu(gate)), stacked.
struct SwiGluBackward;

impl candle_core::CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "fused-swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = slice(s1, l1, self.name())?;
        let up = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(4096)
            .zip(du.par_chunks_mut(4096))
            .zip(
                gate.par_chunks(4096)
                    .zip(up.par_chunks(4096))
                    .zip(g.par_chunks(4096)),
            )
            .for_each(|((dg, du), ((gate, up), g))| vec_exp::swiglu_backward(dg, du, gate, up, g));
        let mut dims = vec![2];
        dims.extend(l1.shape().dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `silu(gate) · up` with a fused backward on the CPU.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::fused_cuda::applies(gate) {
        return super::fused_cuda::swiglu(gate, up);
    }
    if !gate.device().is_cpu() || gate.dtype() != candle_core::DType::F32 {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// Per-row cross-entropy: `loss[i] = logsumexp(logits[i]) − logits[i, target[i]]`.
struct CrossEntropy {
    targets: Vec<u32>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let (n, v) = l.shape().dims2()?;
        let mut loss = vec![0f32; n];
        loss.par_iter_mut()
            .zip(x.par_chunks(v))
            .zip(self.targets.par_iter())
            .for_each(|((loss, row), &t)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = vec_exp::sum_exp_shifted(row, max);
                *loss = sum.ln() + max - row[t as usize];
            });
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = CrossEntropyBackward {
            targets: self.targets.clone(),
        };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &back)?))
    }
}

/// d logits[i] = g[i] · (softmax(logits[i]) − onehot(target[i])).
struct CrossEntropyBackward {
    targets: Vec<u32>,
}

impl CustomOp2 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let (_, v) = l1.shape().dims2()?;
        let mut d = vec![0f32; x.len()];
        d.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(g.par_iter().zip(self.targets.par_iter()))
            .for_each(|((d, row), (&g, &t))| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                d.copy_from_slice(row);
                let sum = vec_exp::exp_shifted_sum(d, max);
                let scale = g / sum;
                for d in d.iter_mut() {
                    *d *= scale;
                }
                d[t as usize] -= g;
            });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// Cross-entropy of each row of `logits` (N, V) against `targets` (N,): (N,) losses, with a
/// fused backward on the CPU (the composed log-softmax keeps several (N, V) temporaries, which
/// for a 49k vocabulary are the largest tensors of a training step).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if !logits.device().is_cpu() || logits.dtype() != candle_core::DType::F32 {
        let log_probs = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
        return log_probs
            .gather(&targets.unsqueeze(1)?, 1)?
            .squeeze(1)?
            .neg();
    }
    let targets: Vec<u32> = targets.to_vec1()?;
    let v = logits.dim(1)?;
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross-entropy: label {bad} is outside the vocabulary of {v}");
    }
    logits.contiguous()?.apply_op1(CrossEntropy { targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    use crate::model::max_abs_diff as max_diff;

    /// A fixed non-trivial upstream gradient: d(Σ y∘c)/dy = c.
    fn weighted_sum(y: &Tensor, seed: f64) -> Tensor {
        let c = (Tensor::arange(0f32, y.elem_count() as f32, y.device())
            .unwrap()
            .reshape(y.shape())
            .unwrap()
            * 0.37)
            .unwrap()
            .affine(1.0, seed)
            .unwrap()
            .sin()
            .unwrap();
        (y * c).unwrap().sum_all().unwrap()
    }

    #[test]
    fn rms_norm_matches_the_composed_reference_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap()).unwrap();
        let w = Tensor::randn(1f32, 0.2, 16, &dev).unwrap();
        let fast = rms_norm(&x, &w, 1e-5).unwrap();
        let slow = candle_nn::ops::rms_norm_slow(&x, &w, 1e-5).unwrap();
        assert!(max_diff(&fast, &slow) < 1e-5);
        let gf = weighted_sum(&fast, 0.3).backward().unwrap();
        let gs = weighted_sum(&slow, 0.3).backward().unwrap();
        let d = max_diff(gf.get(&x).unwrap(), gs.get(&x).unwrap());
        assert!(d < 1e-4, "gradient differs by {d}");
    }

    #[test]
    fn rope_and_swiglu_match_their_references_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap()).unwrap();
        let angles = Tensor::randn(0f32, 2.0, (2, 1, 5, 4), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let fast = rope(&x, &cos, &sin).unwrap();
        let slow = crate::model::rope::apply_differentiable(&x, &cos, &sin).unwrap();
        assert!(max_diff(&fast, &slow) < 1e-5);
        let gf = weighted_sum(&fast, 0.2).backward().unwrap();
        let gs = weighted_sum(&slow, 0.2).backward().unwrap();
        assert!(max_diff(gf.get(&x).unwrap(), gs.get(&x).unwrap()) < 1e-5);

        let gate = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 7), &dev).unwrap()).unwrap();
        let up = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap()).unwrap();
        let fast = swiglu(&gate, &up).unwrap();
        let slow = (gate.silu().unwrap() * up.as_tensor()).unwrap();
        assert!(max_diff(&fast, &slow) < 1e-5);
        let gf = weighted_sum(&fast, 0.4).backward().unwrap();
        let gs = weighted_sum(&slow, 0.4).backward().unwrap();
        for v in [&gate, &up] {
            let d = max_diff(gf.get(v).unwrap(), gs.get(v).unwrap());
            assert!(d < 1e-5, "gradient differs by {d}");
        }
    }

    #[test]
    fn cross_entropy_matches_log_softmax_with_gradients() {
        let dev = Device::Cpu;
        let logits = Var::from_tensor(&Tensor::randn(0f32, 3.0, (4, 11), &dev).unwrap()).unwrap();
        let targets = Tensor::new(&[3u32, 0, 10, 7], &dev).unwrap();
        let fast = cross_entropy(&logits, &targets).unwrap();
        let slow = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .gather(&targets.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap();
        assert!(max_diff(&fast, &slow) < 1e-5);
        let gf = weighted_sum(&fast, 0.1).backward().unwrap();
        let gs = weighted_sum(&slow, 0.1).backward().unwrap();
        let d = max_diff(gf.get(&logits).unwrap(), gs.get(&logits).unwrap());
        assert!(d < 1e-5, "gradient differs by {d}");
        assert!(cross_entropy(&logits, &Tensor::new(&[3u32, 0, 11, 7], &dev).unwrap()).is_err());
    }

    #[test]
    fn masked_softmax_matches_the_composed_reference_with_gradients() {
        let dev = Device::Cpu;
        let scores =
            Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 3, 5, 5), &dev).unwrap()).unwrap();
        for per_batch in [false, true] {
            let bm = if per_batch { 2 } else { 1 };
            let mask: Vec<f32> = (0..bm * 25)
                .map(|i| {
                    if (i % 25) % 5 > (i % 25) / 5 + i / 25 {
                        -1e4
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (bm, 1, 5, 5), &dev).unwrap();
            let fast = masked_softmax(&scores, 0.125, &mask).unwrap();
            let slow = candle_nn::ops::softmax(
                &(scores.as_tensor() * 0.125)
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap(),
                D::Minus1,
            )
            .unwrap();
            assert!(max_diff(&fast, &slow) < 1e-6);
            let gf = weighted_sum(&fast, 0.7).backward().unwrap();
            let gs = weighted_sum(&slow, 0.7).backward().unwrap();
            let d = max_diff(gf.get(&scores).unwrap(), gs.get(&scores).unwrap());
            assert!(d < 1e-5, "gradient differs by {d}");
        }
    }
}
