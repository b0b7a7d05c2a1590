//! Low-rank compensation of quantization error, the lab's "low-rank matrix quantization": what
//! quantizing a weight lost, `E = W − Q(W)` (out × in), is approximated by a rank-r product `B·A`
//! and carried beside the quantized weight as a LoRA adapter, so the layer computes
//! `x·Q(W)ᵀ + x·(B·A)ᵀ`.
//!
//! The best rank-r approximation depends on what "best" weighs. The output error is `x·(E − BA)ᵀ`,
//! so its expected square over inputs is `‖(E − BA)·R^{1/2}‖²_F` with `R = E[xᵀx]`, the input's
//! (in × in) second-moment matrix. Each method picks a scaling S, takes the truncated SVD of
//! `E·S` (Eckart–Young: the best rank r in that norm) and undoes S on the right:
//!
//! | `scale`    | S                        | method                         |
//! |------------|--------------------------|--------------------------------|
//! | `identity` | I                        | ZeroQuant-V2's LoRC            |
//! | `lqer`     | diag(mean |x_j|)         | LQER                           |
//! | `diag`     | diag(√mean x_j²)         | QERA-approx (√ of the imatrix) |
//! | `rxx`      | R^{1/2} (full)           | QERA-exact                     |
//!
//! `diag` is exact when the input columns are uncorrelated; `rxx` is exact for the measured R.
//! R gets a small ridge (`RIDGE` × its mean diagonal, as GPTQ damps its Hessian) so R^{−1/2}
//! stays bounded in directions the calibration text never excited.
//!
//! LoftQ (`iters > 1`) alternates: re-quantize `W − B·A` to the same type, then re-factor the new
//! error. The base changes, so the result carries the re-quantized model beside the adapter.
//!
//! The factors are split evenly, `B = U_r·√Σ_r`, `A = √Σ_r·V_rᵀ·S⁻¹`; the adapter's alpha equals
//! its rank, so its scale is 1 and `B·A` is added as is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use faer::Mat;

use super::plan::Importance;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::lora::config::{LoraConfig, Target};
use crate::lora::{Adapter, LoraPair};
use crate::model::linear::{Linear, Weight};
use crate::model::perplexity::Windows;
use crate::model::{Logits, Model, ModelParts, Site};

/// R's ridge, relative to its mean diagonal.
pub const RIDGE: f64 = 1e-3;

/// How the error is weighted before the SVD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Identity,
    Lqer,
    Diag,
    Rxx,
}

impl Scale {
    pub const ALL: [Scale; 4] = [Scale::Identity, Scale::Lqer, Scale::Diag, Scale::Rxx];

    pub fn name(self) -> &'static str {
        match self {
            Scale::Identity => "identity",
            Scale::Lqer => "lqer",
            Scale::Diag => "diag",
            Scale::Rxx => "rxx",
        }
    }

    pub fn parse(name: &str) -> Option<Scale> {
        Scale::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What `lowrank` is asked.
#[derive(Debug, Clone)]
pub struct LowRankOptions {
    pub rank: usize,
    pub scale: Scale,
    /// 1: one SVD of the given quantization's error; more: LoftQ's alternation.
    pub iters: usize,
    /// Calibration text (lqer and rxx need it; diag takes it or an importance matrix).
    pub text: Option<String>,
    /// `diag` from an importance matrix instead of text (its √ mean x_j²).
    pub imatrix: Option<Arc<Importance>>,
    pub ctx: usize,
    pub chunks: Option<usize>,
    pub targets: Vec<Target>,
}

impl Default for LowRankOptions {
    fn default() -> Self {
        LowRankOptions {
            rank: 8,
            scale: Scale::Diag,
            iters: 1,
            text: None,
            imatrix: None,
            ctx: 512,
            chunks: None,
            targets: Target::ALL.to_vec(),
        }
    }
}

/// One tensor's fit: the scaled error's Frobenius norm before and after the compensation.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorFit {
    /// llama.cpp's name.
    pub name: String,
    pub before: f64,
    pub after: f64,
}

/// The compensation of a quantized model.
#[derive(Debug, Clone)]
pub struct LowRank {
    pub adapter: Adapter,
    /// LoftQ (`iters > 1`): the re-quantized base the adapter belongs to.
    pub base: Option<Model>,
    pub fits: Vec<TensorFit>,
}

/// Per distinct projection input (keyed by the first target reading it: q for q/k/v, gate for
/// gate/up): Σ|x_j|, Σx_j², the Gram matrix Σ xᵀx (rxx only) and the tokens seen.
#[derive(Debug, Clone)]
pub struct InputStats {
    pub abs_sum: Vec<f64>,
    pub sq_sum: Vec<f64>,
    pub gram: Option<Tensor>,
    pub tokens: u64,
}

/// The target whose observation stands for `t`'s input (q/k/v and gate/up read one tensor).
fn input_of(t: Target) -> Target {
    match t {
        Target::K | Target::V => Target::Q,
        Target::Up => Target::Gate,
        other => other,
    }
}

/// Run `text` through `model` and keep every block input's statistics (the Gram matrix when
/// `gram`).
pub fn input_stats(
    model: &Model,
    text: &str,
    ctx: usize,
    chunks: Option<usize>,
    gram: bool,
    cancel: &CancelToken,
) -> Result<BTreeMap<(usize, Target), InputStats>> {
    let windows = Windows::new(model, text, ctx, chunks)?;
    let stats: Mutex<BTreeMap<(usize, Target), InputStats>> = Mutex::new(BTreeMap::new());
    let observe = |site: Site, x: &Tensor| -> Result<()> {
        let Site::Block(layer, t) = site else {
            return Ok(());
        };
        if input_of(t) != t {
            return Ok(()); // the same tensor as q's or gate's
        }
        let c = x.dim(candle_core::D::Minus1)?;
        let x2 = x.to_dtype(DType::F32)?.reshape(((), c))?; // (T, C)
        let tokens = x2.dim(0)?;
        let values: Vec<f32> = x2.flatten_all()?.to_vec1()?;
        let (mut abs, mut sq) = (vec![0f64; c], vec![0f64; c]);
        for row in values.chunks(c.max(1)) {
            for (j, &v) in row.iter().enumerate() {
                abs[j] += v.abs() as f64;
                sq[j] += v as f64 * v as f64;
            }
        }
        let g = if gram {
            Some(x2.t()?.matmul(&x2)?) // (C, C)
        } else {
            None
        };
        let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
        match stats.get_mut(&(layer, t)) {
            Some(s) => {
                s.abs_sum.iter_mut().zip(&abs).for_each(|(a, b)| *a += b);
                s.sq_sum.iter_mut().zip(&sq).for_each(|(a, b)| *a += b);
                if let (Some(acc), Some(g)) = (&mut s.gram, g) {
                    *acc = (&*acc + g)?;
                }
                s.tokens += tokens as u64;
            }
            None => {
                stats.insert(
                    (layer, t),
                    InputStats {
                        abs_sum: abs,
                        sq_sum: sq,
                        gram: g,
                        tokens: tokens as u64,
                    },
                );
            }
        }
        Ok(())
    };
    super::activations::run_windows(model, &windows, Logits::Last, &observe, cancel)?;
    Ok(stats.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// The scaling S of one input, with what undoes it.
pub enum Scaling {
    Identity,
    /// S = diag(s).
    Diag(Vec<f64>),
    /// S = R^{1/2} (in × in) and S⁻¹.
    Full {
        half: Mat<f64>,
        inv_half: Mat<f64>,
    },
}

impl Scaling {
    /// diag(s) with each s_j at least 1e-6 of the largest (a column never seen would otherwise
    /// make S⁻¹ infinite; its error does not matter and stays uncompensated).
    pub fn diag(s: Vec<f64>) -> Scaling {
        let max = s.iter().cloned().fold(0.0, f64::max);
        let floor = (max * 1e-6).max(f64::MIN_POSITIVE);
        Scaling::Diag(s.into_iter().map(|v| v.max(floor)).collect())
    }

    /// R^{1/2} and R^{−1/2} of the symmetric `r` (n × n, row-major), with the ridge.
    pub fn full(r: &[f64], n: usize) -> Result<Scaling> {
        let mean_diag = (0..n).map(|i| r[i * n + i]).sum::<f64>() / n.max(1) as f64;
        let ridge = RIDGE * mean_diag.max(f64::MIN_POSITIVE);
        let m = Mat::from_fn(n, n, |i, j| r[i * n + j] + if i == j { ridge } else { 0.0 });
        let eig = m
            .self_adjoint_eigen(faer::Side::Lower)
            .map_err(|e| Error::msg(format!("lowrank: eigendecomposition of R: {e:?}")))?;
        let (u, s) = (eig.U(), eig.S().column_vector());
        let lam: Vec<f64> = (0..n).map(|i| s[i].max(ridge)).collect();
        let build = |f: &dyn Fn(f64) -> f64| {
            let scaled = Mat::from_fn(n, n, |i, j| u[(i, j)] * f(lam[j]));
            &scaled * u.transpose()
        };
        Ok(Scaling::Full {
            half: build(&|l| l.sqrt()),
            inv_half: build(&|l| 1.0 / l.sqrt()),
        })
    }
}

/// The best rank-`rank` B (out × r) and A (r × in) for `e` (out × in, row-major) under `s`, and
/// the scaled error's norm before and after.
pub fn factor(
    e: &[f32],
    out: usize,
    inp: usize,
    rank: usize,
    s: &Scaling,
) -> Result<(Vec<f32>, Vec<f32>, f64, f64)> {
    let e = Mat::from_fn(out, inp, |i, j| e[i * inp + j] as f64);
    let m = match s {
        Scaling::Identity => e,
        Scaling::Diag(d) => Mat::from_fn(out, inp, |i, j| e[(i, j)] * d[j]),
        Scaling::Full { half, .. } => &e * half,
    };
    let svd = m
        .thin_svd()
        .map_err(|err| Error::msg(format!("lowrank: SVD: {err:?}")))?;
    let (u, sigma, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let r = rank.min(out).min(inp);
    let total: f64 = (0..sigma.nrows()).map(|i| sigma[i] * sigma[i]).sum();
    let kept: f64 = (0..r).map(|i| sigma[i] * sigma[i]).sum();
    let b = Mat::from_fn(out, r, |i, k| u[(i, k)] * sigma[k].sqrt());
    let a_scaled = Mat::from_fn(r, inp, |k, j| sigma[k].sqrt() * v[(j, k)]);
    let a = match s {
        Scaling::Identity => a_scaled,
        Scaling::Diag(d) => Mat::from_fn(r, inp, |k, j| a_scaled[(k, j)] / d[j]),
        Scaling::Full { inv_half, .. } => &a_scaled * inv_half,
    };
    let b_out = (0..out * r).map(|x| b[(x / r, x % r)] as f32).collect();
    let a_out = (0..r * inp).map(|x| a[(x / inp, x % inp)] as f32).collect();
    Ok((b_out, a_out, total.sqrt(), (total - kept).max(0.0).sqrt()))
}

/// The scaling of block `layer`'s input of `t`.
fn scaling_for(
    opts: &LowRankOptions,
    stats: &BTreeMap<(usize, Target), InputStats>,
    layer: usize,
    t: Target,
) -> Result<Scaling> {
    if opts.scale == Scale::Identity {
        return Ok(Scaling::Identity);
    }
    let name = format!("blk.{layer}.{}.weight", t.gguf_part());
    if opts.scale == Scale::Diag {
        if let Some(im) = &opts.imatrix {
            let col = im.of(&name).ok_or_else(|| {
                Error::msg(format!(
                    "lowrank: the importance matrix has no entry for {name}; collect it on this model with imatrix()"
                ))
            })?;
            return Ok(Scaling::diag(
                col.iter().map(|&v| (v as f64).max(0.0).sqrt()).collect(),
            ));
        }
    }
    let s = stats
        .get(&(layer, input_of(t)))
        .ok_or_else(|| Error::msg(format!("lowrank: no calibration statistics for {name}")))?;
    let n = s.tokens.max(1) as f64;
    Ok(match opts.scale {
        Scale::Lqer => Scaling::diag(s.abs_sum.iter().map(|v| v / n).collect()),
        Scale::Diag => Scaling::diag(s.sq_sum.iter().map(|v| (v / n).sqrt()).collect()),
        Scale::Rxx => {
            let g = s.gram.as_ref().expect("collected with the Gram matrix");
            let dim = g.dim(0)?;
            let r: Vec<f64> = g
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|&v| v as f64 / n)
                .collect();
            Scaling::full(&r, dim)?
        }
        Scale::Identity => unreachable!("returned above"),
    })
}

/// `values` (rows × cols) as ggml blocks of `dtype`, with the importance when given.
fn requantize(
    values: &[f32],
    rows: usize,
    cols: usize,
    dtype: candle_core::quantized::GgmlDType,
    importance: Option<&[f32]>,
    name: &str,
) -> Result<QTensor> {
    let ty = GgmlType::from_candle(dtype);
    let bytes = crate::gguf::export::encode_weighted(values, cols, &ty, importance)
        .map_err(|e| Error::msg(format!("lowrank: re-quantizing {name}: {e}")))?;
    let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// Compensate `quantized`'s error against `reference` (the unquantized model it came from).
pub fn lowrank(
    quantized: &Model,
    reference: &Model,
    opts: &LowRankOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LowRank> {
    if opts.rank == 0 {
        return Err(Error::msg("lowrank: key \"rank\": must be at least 1"));
    }
    if opts.iters == 0 {
        return Err(Error::msg(
            "lowrank: key \"iters\": must be at least 1 (1: one SVD; more: LoftQ's alternation)",
        ));
    }
    let (q, r) = (&quantized.llama, &reference.llama);
    if q.blocks.len() != r.blocks.len() || q.config.hidden_size != r.config.hidden_size {
        return Err(Error::msg(
            "lowrank: the quantized model and the reference have different shapes; give the unquantized model the quantized one came from",
        ));
    }
    let needs_text = match opts.scale {
        Scale::Identity => false,
        Scale::Diag => opts.imatrix.is_none(),
        Scale::Lqer | Scale::Rxx => true,
    };
    let stats = match (&opts.text, needs_text) {
        (Some(text), true) => input_stats(reference, text, opts.ctx, opts.chunks, opts.scale == Scale::Rxx, cancel)?,
        (None, true) => {
            return Err(Error::msg(format!(
                "lowrank: key \"text\": scale \"{}\" weighs the error by the inputs: give calibration text (or, for \"diag\", an imatrix)",
                opts.scale.name()
            )))
        }
        _ => BTreeMap::new(),
    };
    let device = q.device.clone();
    let mut base = q.clone();
    let mut layers = Vec::with_capacity(q.blocks.len());
    let mut fits = Vec::new();
    let total = q.blocks.len() * opts.targets.len();
    for i in 0..q.blocks.len() {
        let mut pairs: [Option<LoraPair>; 7] = Default::default();
        for &t in &opts.targets {
            cancel.check()?;
            let name = format!("blk.{i}.{}.weight", t.gguf_part());
            let (out, inp) = r.blocks[i].linear(t).dims();
            let w: Vec<f32> = r.blocks[i]
                .linear(t)
                .dense_weight()?
                .flatten_all()?
                .to_vec1()?;
            let lin = q.blocks[i].linear(t);
            let scaling = scaling_for(opts, &stats, i, t)?;
            let dequant = |l: &Linear| -> Result<Vec<f32>> {
                Ok(l.dense_weight()?.flatten_all()?.to_vec1()?)
            };
            let err_of =
                |wq: &[f32]| -> Vec<f32> { w.iter().zip(wq).map(|(a, b)| a - b).collect() };
            let mut e = err_of(&dequant(lin)?);
            let (mut b, mut a, before, mut after) = factor(&e, out, inp, opts.rank, &scaling)?;
            if opts.iters > 1 {
                let dtype = match &lin.weight {
                    Weight::Quantized(m, _) => match m.as_ref() {
                        QMatMul::QTensor(qt) => qt.dtype(),
                        _ => {
                            return Err(Error::msg(format!(
                                "lowrank: iters > 1 re-quantizes, but {name} is not in ggml blocks"
                            )))
                        }
                    },
                    Weight::Dense(_) => {
                        return Err(Error::msg(format!(
                            "lowrank: iters > 1 re-quantizes, but {name} is not quantized"
                        )))
                    }
                };
                let importance = opts.imatrix.as_ref().and_then(|im| im.of(&name));
                let mut new_lin = lin.clone();
                for _ in 1..opts.iters {
                    let rank = b.len() / out;
                    let ba = matmul(&b, &a, out, rank, inp);
                    let target: Vec<f32> = w.iter().zip(&ba).map(|(x, y)| x - y).collect();
                    let qt = requantize(&target, out, inp, dtype, importance, &name)?;
                    let qt = if device.is_cpu() {
                        qt
                    } else {
                        QTensor::new(QStorage::from_data(qt.data()?, &device, dtype)?, (out, inp))?
                    };
                    new_lin = Linear::quantized(qt, lin.bias.clone())?;
                    e = err_of(&dequant(&new_lin)?);
                    (b, a, _, after) = factor(&e, out, inp, opts.rank, &scaling)?;
                }
                *base.blocks[i].linear_mut(t) = new_lin;
            }
            let rank = b.len() / out;
            let a = Var::from_tensor(&Tensor::from_vec(a, (rank, inp), &device)?)?;
            let b = Var::from_tensor(&Tensor::from_vec(b, (out, rank), &device)?)?;
            pairs[t.index()] = Some(LoraPair { a, b });
            fits.push(TensorFit {
                name,
                before,
                after,
            });
            progress(fits.len(), total);
        }
        layers.push(pairs);
    }
    let config = LoraConfig {
        rank: opts.rank,
        alpha: opts.rank as f64,
        dropout: 0.0,
        targets: opts.targets.clone(),
        rslora: false,
    };
    let adapter = Adapter {
        config,
        layers,
        base_model: quantized.source.clone(),
        template: None,
        requantized_base: None,
    };
    let base = (opts.iters > 1).then(|| {
        Model::new(ModelParts {
            llama: base,
            source: format!(
                "{} re-quantized by LoftQ ({} iterations)",
                quantized.source, opts.iters
            ),
            ..(**quantized).clone()
        })
    });
    let adapter = Adapter {
        requantized_base: base.clone(),
        ..adapter
    };
    Ok(LowRank {
        adapter,
        base,
        fits,
    })
}

/// (m × k) · (k × n), row-major.
fn matmul(x: &[f32], y: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            let a = x[i * k + p];
            for j in 0..n {
                out[i * n + j] += a * y[p * n + j];
            }
        }
    }
    out
}

/// Bytes of an adapter's factors as a LoRA GGUF stores them (F32; what a report adds to the
/// quantized weights' bytes so low-rank competes at equal total size).
pub fn adapter_bytes(adapter: &Adapter) -> u64 {
    adapter.num_params() as u64 * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..rows * cols)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    /// ‖(e − b·a)·diag(d)‖_F computed directly.
    fn residual(
        e: &[f32],
        b: &[f32],
        a: &[f32],
        out: usize,
        r: usize,
        inp: usize,
        d: Option<&[f64]>,
    ) -> f64 {
        let ba = matmul(b, a, out, r, inp);
        let mut s = 0f64;
        for i in 0..out {
            for j in 0..inp {
                let x = (e[i * inp + j] - ba[i * inp + j]) as f64 * d.map_or(1.0, |d| d[j]);
                s += x * x;
            }
        }
        s.sqrt()
    }

    #[test]
    fn a_low_rank_matrix_is_reconstructed() {
        let (out, inp, r) = (40, 24, 3);
        let e = matmul(&matrix(out, r, 1), &matrix(r, inp, 2), out, r, inp);
        let (b, a, before, after) = factor(&e, out, inp, r, &Scaling::Identity).unwrap();
        assert!(after < 1e-4 * before, "{after} vs {before}");
        assert!(residual(&e, &b, &a, out, r, inp, None) < 1e-3 * before);
    }

    #[test]
    fn the_residual_is_the_svd_tail_and_no_worse_than_a_random_rank() {
        let (out, inp, r) = (30, 20, 4);
        let e = matrix(out, inp, 3);
        let (b, a, before, after) = factor(&e, out, inp, r, &Scaling::Identity).unwrap();
        let direct = residual(&e, &b, &a, out, r, inp, None);
        assert!(
            (direct - after).abs() < 1e-4 * before,
            "{direct} vs {after}"
        );
        // Eckart–Young: any other rank-r product does worse, e.g. one from a different matrix.
        let (b2, a2, ..) = factor(&matrix(out, inp, 4), out, inp, r, &Scaling::Identity).unwrap();
        assert!(residual(&e, &b2, &a2, out, r, inp, None) > direct);
        // More rank, less error; full rank, none.
        let (.., after_more) = factor(&e, out, inp, 8, &Scaling::Identity).unwrap();
        assert!(after_more < after);
        let (.., none) = factor(&e, out, inp, inp, &Scaling::Identity).unwrap();
        assert!(none < 1e-6 * before);
    }

    #[test]
    fn a_diagonal_scaling_minimises_the_weighted_error() {
        let (out, inp, r) = (24, 16, 3);
        let e = matrix(out, inp, 5);
        let d: Vec<f64> = (0..inp).map(|j| if j < 4 { 10.0 } else { 0.1 }).collect();
        let (bd, ad, _, after) = factor(&e, out, inp, r, &Scaling::diag(d.clone())).unwrap();
        let (bi, ai, ..) = factor(&e, out, inp, r, &Scaling::Identity).unwrap();
        let weighted = residual(&e, &bd, &ad, out, r, inp, Some(&d));
        assert!(
            (weighted - after).abs() < 1e-3 * after.max(1e-9),
            "{weighted} vs {after}"
        );
        assert!(weighted < residual(&e, &bi, &ai, out, r, inp, Some(&d)));
    }

    #[test]
    fn the_full_scaling_is_a_square_root_and_its_inverse() {
        let n = 6;
        let x = matrix(50, n, 6);
        let mut rm = vec![0f64; n * n];
        for row in x.chunks(n) {
            for i in 0..n {
                for j in 0..n {
                    rm[i * n + j] += (row[i] * row[j]) as f64 / 50.0;
                }
            }
        }
        let Scaling::Full { half, inv_half } = Scaling::full(&rm, n).unwrap() else {
            panic!("full")
        };
        let sq = &half * &half;
        let id = &half * &inv_half;
        let mean_diag = (0..n).map(|i| rm[i * n + i]).sum::<f64>() / n as f64;
        for i in 0..n {
            for j in 0..n {
                let want = rm[i * n + j] + if i == j { RIDGE * mean_diag } else { 0.0 };
                assert!((sq[(i, j)] - want).abs() < 1e-9, "R^1/2 squared");
                assert!((id[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn scales_parse_by_name() {
        for s in Scale::ALL {
            assert_eq!(Scale::parse(s.name()), Some(s));
        }
        assert_eq!(Scale::parse("svd"), None);
    }
}
