//! Causal attention for training on the CPU without the T×T matrices (FlashAttention's idea,
//! Dao et al. 2022, for a CPU): queries are taken in blocks of [`BLOCK`] rows; each block's
//! scores against the keys it may see are computed, turned into probabilities and multiplied
//! by the values while they are in cache, and only the output and one log-sum-exp per row are
//! kept for the backward pass, which recomputes each block's probabilities from them.
//!
//! The composed attention ([`super::llama`]: scores, [`super::fused::masked_softmax`],
//! product) keeps two (B, H, T, T) tensors per block until the backward pass — at 4 × 1024
//! tokens and SmolLM2's 9 heads 300 MB per block, 9 GB over its 30 blocks — and computes the
//! masked half of every score matrix. This op keeps (B, H, T) floats beside the output and
//! skips the keys a block cannot see: those after its last query (causality) and those before
//! the first query's segment (packing with `neat_packing`).
//!
//! Grouped-query heads read their key/value head in place. The composed attention is the
//! reference: the tests compare outputs and all three gradients with it.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::vec_exp;

/// Query rows per block: a block's scores (BLOCK × T floats) stay in the core's cache.
const BLOCK: usize = 64;

/// softmax(q kᵀ · scale, causal within equal `segments`) v for q (B, Hq, T, D) and k, v
/// (B, Hkv, T, D), all contiguous f32 on the CPU; `segments` (B·T) or None: one segment per row.
/// → (B, Hq, T, D), differentiable in q, k and v.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: Option<&[u32]>,
    scale: f32,
) -> candle_core::Result<Tensor> {
    let (b, hq, t, d) = q.dims4()?;
    let (_, hkv, _, _) = k.dims4()?;
    let op = FlashAttention {
        shape: Dims { b, hq, hkv, t, d },
        starts: Arc::new(segment_starts(b, t, segments)),
        scale,
        log_sum_exp: Mutex::new(None),
    };
    q.contiguous()?
        .apply_op3_arc(&k.contiguous()?, &v.contiguous()?, Arc::new(Box::new(op)))
}

/// Whether [`attention`] can run these tensors (f32 on the CPU, as many keys as queries).
pub fn applies(q: &Tensor, k: &Tensor) -> bool {
    q.device().is_cpu()
        && q.dtype() == candle_core::DType::F32
        && k.dtype() == candle_core::DType::F32
        && q.rank() == 4
        && k.rank() == 4
        && q.dim(2).ok() == k.dim(2).ok()
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    d: usize,
}

/// For each position (B·T), where its segment starts in its row: the first key it may see.
/// Segments are runs of equal ids, as packing writes them (examples 1, 2, …, then padding 0).
fn segment_starts(b: usize, t: usize, segments: Option<&[u32]>) -> Vec<u32> {
    let mut starts = vec![0u32; b * t];
    if let Some(seg) = segments {
        for r in 0..b {
            let row = &seg[r * t..(r + 1) * t];
            debug_assert!(
                {
                    let mut runs: Vec<u32> = row.to_vec();
                    runs.dedup();
                    let mut ids = runs.clone();
                    ids.sort_unstable();
                    ids.dedup();
                    ids.len() == runs.len()
                },
                "flash-attention: a segment id comes back after another in row {r}"
            );
            let mut start = 0;
            for i in 0..t {
                if i > 0 && row[i] != row[i - 1] {
                    start = i;
                }
                starts[r * t + i] = start as u32;
            }
        }
    }
    starts
}

struct FlashAttention {
    shape: Dims,
    starts: Arc<Vec<u32>>,
    scale: f32,
    /// Each query row's log Σ exp(score) from the forward pass (B·Hq·T), for the backward pass.
    log_sum_exp: Mutex<Option<Arc<Vec<f32>>>>,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("flash-attention: inputs must be contiguous f32"),
    }
}

/// `dst (m × n) = [dst +] scale · a (m × k) · b (k × n)`, each matrix given by its slice and its row and
/// column strides, single-threaded (the heads run in parallel around it).
#[allow(clippy::too_many_arguments)]
fn product(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    accumulate: bool,
    scale: f32,
) {
    let reach = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(
        dst.len() >= reach(m, n, n, 1),
        "flash-attention: dst too short"
    );
    assert!(
        a.0.len() >= reach(m, k, a.1, a.2),
        "flash-attention: lhs too short"
    );
    assert!(
        b.0.len() >= reach(k, n, b.1, b.2),
        "flash-attention: rhs too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above keep every element gemm reads or writes inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.0.as_ptr(),
            a.2 as isize,
            a.1 as isize,
            b.0.as_ptr(),
            b.2 as isize,
            b.1 as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl FlashAttention {
    /// The keys query rows `i0..i1` of batch row `r` may see: `first..i1`.
    fn key_range(&self, r: usize, i0: usize, i1: usize) -> (usize, usize) {
        let t = self.shape.t;
        (self.starts[r * t + i0] as usize, i1)
    }

    /// Block `i0..i1` of head `h` in batch row `r`: the probabilities (rows × keys, masked
    /// entries 0) into `p`, from the scores q kᵀ; with `lse` given they are exp(s − lse),
    /// otherwise softmax rows whose log-sum-exps are written to `lse_out`.
    #[allow(clippy::too_many_arguments)]
    fn probabilities(
        &self,
        r: usize,
        (i0, i1): (usize, usize),
        q: &[f32],
        k: &[f32],
        p: &mut [f32],
        lse: Option<&[f32]>,
        lse_out: &mut [f32],
    ) -> usize {
        let d = self.shape.d;
        let (first, last) = self.key_range(r, i0, i1);
        let n = last - first;
        let rows = i1 - i0;
        product(
            &mut p[..rows * n],
            (rows, n, d),
            (&q[i0 * d..], d, 1),
            (&k[first * d..], 1, d),
            false,
            self.scale,
        );
        for (row, scores) in p[..rows * n].chunks_mut(n).enumerate() {
            // Row i sees keys start(i)..=i: columns lo..=hi of the block's key range.
            let i = i0 + row;
            let lo = self.starts[r * self.shape.t + i] as usize - first;
            let hi = i - first;
            let (before, rest) = scores.split_at_mut(lo);
            let (seen, after) = rest.split_at_mut(hi + 1 - lo);
            before.fill(0.0);
            after.fill(0.0);
            match lse {
                Some(lse) => {
                    vec_exp::exp_shifted_sum(seen, lse[row]);
                }
                None => {
                    let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum = vec_exp::exp_shifted_sum(seen, max);
                    lse_out[row] = max + sum.ln();
                    let inv = 1.0 / sum;
                    seen.iter_mut().for_each(|p| *p *= inv);
                }
            }
        }
        n
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dims { b, hq, hkv, t, d } = self.shape;
        let (q, k, v) = (
            contiguous(qs, ql)?,
            contiguous(ks, kl)?,
            contiguous(vs, vl)?,
        );
        let group = hq / hkv;
        let mut out = vec![0f32; b * hq * t * d];
        let mut lse = vec![0f32; b * hq * t];
        out.par_chunks_mut(t * d)
            .zip(lse.par_chunks_mut(t))
            .enumerate()
            .for_each(|(bh, (out, lse))| {
                let (r, h) = (bh / hq, bh % hq);
                let q = &q[bh * t * d..(bh + 1) * t * d];
                let kv = (r * hkv + h / group) * t * d;
                let (k, v) = (&k[kv..kv + t * d], &v[kv..kv + t * d]);
                let mut p = vec![0f32; BLOCK * t];
                for i0 in (0..t).step_by(BLOCK) {
                    let i1 = (i0 + BLOCK).min(t);
                    let n = self.probabilities(r, (i0, i1), q, k, &mut p, None, &mut lse[i0..i1]);
                    let first = i1 - n;
                    product(
                        &mut out[i0 * d..i1 * d],
                        (i1 - i0, d, n),
                        (&p, n, 1),
                        (&v[first * d..], d, 1),
                        false,
                        1.0,
                    );
                }
            });
        *self.log_sum_exp.lock().expect("not poisoned") = Some(Arc::new(lse));
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Dims { b, hq, hkv, t, d } = self.shape;
        let lse = self
            .log_sum_exp
            .lock()
            .expect("not poisoned")
            .clone()
            .ok_or_else(|| {
                candle_core::Error::Msg("flash-attention: backward before forward".into())
            })?;
        let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
        let (qv, kv, vv, ov, gv) = (flat(q)?, flat(k)?, flat(v)?, flat(out)?, flat(grad)?);
        let group = hq / hkv;
        let head = t * d;
        // Per query head: its dq, and its share of its key/value head's dk and dv.
        let mut dq = vec![0f32; b * hq * head];
        let mut dk_share = vec![0f32; b * hq * head];
        let mut dv_share = vec![0f32; b * hq * head];
        dq.par_chunks_mut(head)
            .zip(dk_share.par_chunks_mut(head))
            .zip(dv_share.par_chunks_mut(head))
            .enumerate()
            .for_each(|(bh, ((dq, dk), dv))| {
                let (r, h) = (bh / hq, bh % hq);
                let span = |i: usize| i * head..(i + 1) * head;
                let (q, o, g) = (&qv[span(bh)], &ov[span(bh)], &gv[span(bh)]);
                let kvh = r * hkv + h / group;
                let (k, v) = (&kv[span(kvh)], &vv[span(kvh)]);
                let lse = &lse[bh * t..(bh + 1) * t];
                // D_i = Σ_d dO_id · O_id: the softmax backward's row term.
                let row_dot: Vec<f32> = g
                    .chunks(d)
                    .zip(o.chunks(d))
                    .map(|(g, o)| g.iter().zip(o).map(|(a, b)| a * b).sum())
                    .collect();
                let mut p = vec![0f32; BLOCK * t];
                let mut dp = vec![0f32; BLOCK * t];
                for i0 in (0..t).step_by(BLOCK) {
                    let i1 = (i0 + BLOCK).min(t);
                    let rows = i1 - i0;
                    let n =
                        self.probabilities(r, (i0, i1), q, k, &mut p, Some(&lse[i0..i1]), &mut []);
                    let first = i1 - n;
                    // dV += Pᵀ dO
                    product(
                        &mut dv[first * d..i1 * d],
                        (n, d, rows),
                        (&p, 1, n),
                        (&g[i0 * d..], d, 1),
                        true,
                        1.0,
                    );
                    // dP = dO Vᵀ, then dS = P ∘ (dP − D) in place.
                    product(
                        &mut dp[..rows * n],
                        (rows, n, d),
                        (&g[i0 * d..], d, 1),
                        (&v[first * d..], 1, d),
                        false,
                        1.0,
                    );
                    for row in 0..rows {
                        let di = row_dot[i0 + row];
                        for c in 0..n {
                            let x = row * n + c;
                            dp[x] = p[x] * (dp[x] - di);
                        }
                    }
                    // dQ = scale · dS K, dK += scale · dSᵀ Q
                    product(
                        &mut dq[i0 * d..i1 * d],
                        (rows, d, n),
                        (&dp, n, 1),
                        (&k[first * d..], d, 1),
                        false,
                        self.scale,
                    );
                    product(
                        &mut dk[first * d..i1 * d],
                        (n, d, rows),
                        (&dp, 1, n),
                        (&q[i0 * d..], d, 1),
                        true,
                        self.scale,
                    );
                }
            });
        // Each key/value head's gradient is the sum of its query heads' shares.
        let sum_group = |share: Vec<f32>| {
            let mut total = vec![0f32; b * hkv * head];
            total
                .par_chunks_mut(head)
                .enumerate()
                .for_each(|(kvh, total)| {
                    let (r, g) = (kvh / hkv, kvh % hkv);
                    for m in 0..group {
                        let bh = r * hq + g * group + m;
                        for (t, s) in total.iter_mut().zip(&share[bh * head..(bh + 1) * head]) {
                            *t += s;
                        }
                    }
                });
            total
        };
        let device = q.device();
        let dq = Tensor::from_vec(dq, (b, hq, t, d), device)?;
        let dk = Tensor::from_vec(sum_group(dk_share), (b, hkv, t, d), device)?;
        let dv = Tensor::from_vec(sum_group(dv_share), (b, hkv, t, d), device)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// The composed attention: every score, the additive mask, softmax, product; keys and
    /// values repeated per query head.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        segments: Option<&[u32]>,
        scale: f64,
    ) -> Tensor {
        let (b, hq, t, _) = q.dims4().unwrap();
        let group = hq / k.dim(1).unwrap();
        let repeat = |x: &Tensor| {
            let parts: Vec<Tensor> = (0..hq)
                .map(|h| x.narrow(1, h / group, 1).unwrap())
                .collect();
            Tensor::cat(&parts, 1).unwrap()
        };
        let (k, v) = (repeat(k), repeat(v));
        let mask = super::super::llama::segment_mask(
            b,
            t,
            segments,
            candle_core::DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(&v)
            .unwrap()
    }

    fn relative(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_attention_matches_the_composed_one_values_and_gradients() {
        // Two rows of 150 positions (not a multiple of the block), 6 query heads over 2
        // key/value heads; the second row packs three segments.
        let (b, hq, hkv, t, d) = (2, 6, 2, 150, 16);
        let mut segments = vec![0u32; b * t];
        for (j, s) in segments[t..].iter_mut().enumerate() {
            *s = if j < 40 {
                1
            } else if j < 110 {
                2
            } else {
                3
            };
        }
        let dev = Device::Cpu;
        let q = Var::randn(0f32, 1.0, (b, hq, t, d), &dev).unwrap();
        let k = Var::randn(0f32, 1.0, (b, hkv, t, d), &dev).unwrap();
        let v = Var::randn(0f32, 1.0, (b, hkv, t, d), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (b, hq, t, d), &dev).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        for segments in [None, Some(&segments[..])] {
            let fused = attention(&q, &k, &v, segments, scale as f32).unwrap();
            let composed = reference(&q, &k, &v, segments, scale);
            assert!(relative(&fused, &composed) < 1e-5, "outputs differ");
            let grads = |out: &Tensor| {
                let g = (out * &w).unwrap().sum_all().unwrap().backward().unwrap();
                [&q, &k, &v].map(|x| g.get(x.as_tensor()).unwrap().clone())
            };
            let (gf, gc) = (grads(&fused), grads(&composed));
            for (name, (a, b)) in ["q", "k", "v"].iter().zip(gf.iter().zip(&gc)) {
                let r = relative(a, b);
                assert!(
                    r < 1e-4,
                    "d{name} differs by {r} (segments {})",
                    segments.is_some()
                );
            }
        }
    }
}
