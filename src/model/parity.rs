//! Numerical agreement of two copies of one model on different devices or dtypes: the logits of a
//! training forward pass and the gradients of every LoRA factor, the candidate (say `cuda:0`
//! bf16) against a reference (`cpu` f32).
//!
//! Both copies get the same random batch and the same adapter: A as LoRA initialises it and B
//! set to small non-zero values (at B = 0, as training starts, A's gradient is zero and the update
//! does nothing, so nothing would be compared). The tolerances are those of the candidate's
//! dtype: f32 agrees to float rounding (different summation orders), bf16 keeps 8 bits of
//! mantissa, so its logits differ by about a percent after 30 layers.

use candle_core::{DType, Tensor, D};

use super::{Model, Pass};
use crate::data::encode::Encoded;
use crate::error::{Error, Result};
use crate::lora::{Adapter, LoraConfig, Target};
use crate::rng::Rng;
use crate::train::batch::{stack, Item};
use crate::train::loss::cross_entropy_sum;

/// What to compare on.
#[derive(Debug, Clone)]
pub struct ParityOptions {
    pub batch: usize,
    pub seq: usize,
    pub rank: usize,
    pub seed: u64,
}

impl Default for ParityOptions {
    fn default() -> Self {
        ParityOptions {
            batch: 2,
            seq: 64,
            rank: 8,
            seed: 0,
        }
    }
}

/// How far the candidate is from the reference.
#[derive(Debug, Clone)]
pub struct Parity {
    /// `cpu f32`, `cuda:0 bf16`, …
    pub reference: String,
    pub candidate: String,
    /// The candidate's compute dtype, which sets the tolerances.
    pub dtype: DType,
    /// ‖Δlogits‖ / ‖logits‖ over every predicted position.
    pub logits_rel: f64,
    /// The same for the inference path (KV cache, last position only): after the prompt, and
    /// after one more token decoded from the cache; the larger of the two.
    pub infer_logits_rel: f64,
    /// Largest |Δlogit|.
    pub logits_max_abs: f64,
    /// Positions whose most likely next token is the same.
    pub top1_agreement: f64,
    pub loss_reference: f64,
    pub loss_candidate: f64,
    /// ‖Δg‖ / ‖g‖ over all LoRA factors' gradients together.
    pub grad_rel: f64,
    /// The smallest cosine between a factor's two gradients.
    pub grad_min_cosine: f64,
    /// Two AdamW steps of the LoRA factors (always f32) on the candidate's device against the
    /// CPU's, from the same weights and gradients: ‖ΔΔw‖ / ‖Δw‖.
    pub optimizer_rel: f64,
}

/// Tolerances of one compute dtype.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub logits_rel: f64,
    pub top1_agreement: f64,
    pub grad_rel: f64,
    pub grad_min_cosine: f64,
}

/// f32 on two devices: only summation order differs (measured ~1e-6 relative).
const F32_TOLERANCE: Tolerance = Tolerance {
    logits_rel: 1e-3,
    top1_agreement: 0.99,
    grad_rel: 1e-2,
    grad_min_cosine: 0.999,
};

/// bf16 (8-bit mantissa, relative rounding 2⁻⁹ per op) against f32: logits within a few percent;
/// gradients, which pass back through every layer, point the same way but differ more. Measured
/// on the CPU twin: SmolLM2 logits 1.9e-2, top-1 92.9% (random tokens make flat predictions whose
/// argmax flips easily), gradients 6.3e-2, min cosine 0.987; tiny 1.8e-2, 96%, 3.0e-2, 0.999.
const BF16_TOLERANCE: Tolerance = Tolerance {
    logits_rel: 0.05,
    top1_agreement: 0.85,
    grad_rel: 0.25,
    grad_min_cosine: 0.95,
};

/// f16 keeps 11 bits of mantissa: logits agree ten times closer than bf16's (measured on an H200:
/// SmolLM2 1.7e-3, top-1 99.2%), but its narrow exponent range loses small gradients without loss
/// scaling, so its gradients agree no better than bf16's (measured: 7.4e-2, min cosine 0.976).
const F16_TOLERANCE: Tolerance = Tolerance {
    logits_rel: 0.02,
    top1_agreement: 0.95,
    grad_rel: 0.25,
    grad_min_cosine: 0.95,
};

/// The optimizer works in f32 on every device: only rounding (fused multiply-adds) may differ.
const OPTIMIZER_TOLERANCE: f64 = 1e-4;

impl Tolerance {
    /// The tolerances for a candidate computing in `dtype`.
    pub fn of(dtype: DType) -> Tolerance {
        match dtype {
            DType::BF16 => BF16_TOLERANCE,
            DType::F16 => F16_TOLERANCE,
            _ => F32_TOLERANCE,
        }
    }
}

impl Parity {
    /// The tolerances this comparison is judged by.
    pub fn tolerance(&self) -> Tolerance {
        Tolerance::of(self.dtype)
    }

    /// The measures outside their tolerance, by name (empty: the candidate agrees).
    pub fn failures(&self) -> Vec<String> {
        let t = self.tolerance();
        // NaN fails every check.
        let above = |v: f64, max: f64| v.is_nan() || v > max;
        let below = |v: f64, min: f64| v.is_nan() || v < min;
        let mut out = Vec::new();
        if above(self.logits_rel, t.logits_rel) {
            out.push(format!(
                "logits_rel {:.2e} > {:.0e}",
                self.logits_rel, t.logits_rel
            ));
        }
        if above(self.infer_logits_rel, t.logits_rel) {
            out.push(format!(
                "infer_logits_rel {:.2e} > {:.0e}",
                self.infer_logits_rel, t.logits_rel
            ));
        }
        if below(self.top1_agreement, t.top1_agreement) {
            out.push(format!(
                "top1_agreement {:.3} < {}",
                self.top1_agreement, t.top1_agreement
            ));
        }
        if above(self.grad_rel, t.grad_rel) {
            out.push(format!(
                "grad_rel {:.2e} > {:.0e}",
                self.grad_rel, t.grad_rel
            ));
        }
        if below(self.grad_min_cosine, t.grad_min_cosine) {
            out.push(format!(
                "grad_min_cosine {:.4} < {}",
                self.grad_min_cosine, t.grad_min_cosine
            ));
        }
        if above(self.optimizer_rel, OPTIMIZER_TOLERANCE) {
            out.push(format!(
                "optimizer_rel {:.2e} > {OPTIMIZER_TOLERANCE:.0e}",
                self.optimizer_rel
            ));
        }
        out
    }
}

impl std::fmt::Display for Parity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failures = self.failures();
        write!(
            f,
            "parity {} vs {}: logits rel {:.2e} (max |Δ| {:.3}; inference {:.2e}), top-1 {:.1}%, loss {:.4} vs {:.4}, LoRA grads rel {:.2e} (min cos {:.4}), AdamW rel {:.1e}: {}",
            self.candidate,
            self.reference,
            self.logits_rel,
            self.logits_max_abs,
            self.infer_logits_rel,
            100.0 * self.top1_agreement,
            self.loss_candidate,
            self.loss_reference,
            self.grad_rel,
            self.grad_min_cosine,
            self.optimizer_rel,
            if failures.is_empty() {
                format!("ok for {}", dtype_name(self.dtype))
            } else {
                format!("OUTSIDE {} tolerance: {}", dtype_name(self.dtype), failures.join(", "))
            }
        )
    }
}

/// `f32`, `bf16`, `f16`.
pub fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

/// One side of the comparison: logits (N, V) f32 on the CPU, the loss, each LoRA factor's
/// gradient (flattened f32 on the CPU) and its value, in `named_vars` order.
struct Side {
    logits: Tensor,
    /// Inference logits (B, 2, V): the prompt's last position, then one decoded token.
    infer: Tensor,
    loss: f64,
    grads: Vec<Vec<f32>>,
    weights: Vec<Tensor>,
}

fn run_side(model: &Model, items: &[Item], opts: &ParityOptions) -> Result<Side> {
    let llama = &model.llama;
    let refs: Vec<&Item> = items.iter().collect();
    let batch = stack(&refs, 0, &llama.device)?;
    // Inference: the rows but their last token as a prompt, then that token from the cache.
    let t = batch.ids.dim(1)?;
    let mut cache = super::KvCache::default();
    let prompt = batch.ids.narrow(1, 0, t - 1)?.contiguous()?;
    let next = batch.ids.narrow(1, t - 1, 1)?.contiguous()?;
    let first = llama.forward(&prompt, Some(&mut cache), None, super::Logits::Last)?;
    let second = llama.forward(&next, Some(&mut cache), None, super::Logits::Last)?;
    let infer = Tensor::cat(&[&first, &second], 1)?
        .to_dtype(DType::F32)?
        .to_device(&candle_core::Device::Cpu)?;
    let lora = LoraConfig {
        rank: opts.rank,
        alpha: 2.0 * opts.rank as f64,
        targets: Target::ALL.to_vec(),
        ..Default::default()
    };
    let adapter = Adapter::new(llama, lora, opts.seed, &model.source)?;
    // B from the same seeded stream on both sides, small enough to keep the update a perturbation.
    let mut rng = Rng::new(opts.seed ^ 0x5eed);
    for (name, var) in adapter.named_vars() {
        if name.ends_with("lora_B.weight") {
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| (rng.next_f64() as f32 - 0.5) * 0.02)
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &llama.device)?)?;
        }
    }
    let pass = Pass {
        adapter: Some(&adapter),
        train: true,
        dropout: None,
        ..Default::default()
    };
    let logits = llama.forward_train(&batch.ids, &batch.positions, None, &batch.rows, pass)?;
    let (sum, _) = cross_entropy_sum(&logits, &batch.targets)?;
    let loss = (sum / batch.num_targets as f64)?;
    let grads_store = loss.backward()?;
    let mut grads = Vec::new();
    let mut weights = Vec::new();
    for (name, var) in adapter.named_vars() {
        // A copy of the value, not the variable (whose storage an optimizer step would update).
        weights.push(
            var.as_tensor()
                .to_device(&candle_core::Device::Cpu)?
                .copy()?,
        );
        let g = grads_store.get(var.as_tensor()).ok_or_else(|| {
            Error::msg(format!(
                "parity: no gradient reached {name} on {}",
                super::device_name(&llama.device)
            ))
        })?;
        grads.push(
            g.to_dtype(DType::F32)?
                .flatten_all()?
                .to_device(&candle_core::Device::Cpu)?
                .to_vec1()?,
        );
    }
    Ok(Side {
        infer,
        logits: logits
            .to_dtype(DType::F32)?
            .to_device(&candle_core::Device::Cpu)?,
        loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64,
        grads,
        weights,
    })
}

/// Two AdamW steps from the same weights and gradients on the CPU (the composed reference) and
/// on `device` (on a GPU, the fused kernel): ‖Δw_device − Δw_cpu‖ / ‖Δw_cpu‖.
fn optimizer_agreement(
    weights: &[Tensor],
    grads: &[Vec<f32>],
    device: &candle_core::Device,
) -> Result<f64> {
    use crate::train::optim::{AdamParams, Optimizer};
    let run = |dev: &candle_core::Device| -> Result<Vec<Vec<f32>>> {
        let vars = weights
            .iter()
            .map(|w| candle_core::Var::from_tensor(&w.to_device(dev)?.copy()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let g = grads
            .iter()
            .zip(weights)
            .map(|(g, w)| Tensor::from_slice(g, w.shape(), dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let params = AdamParams {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = Optimizer::new(vars.clone(), params)?;
        opt.step(&g, 1e-3)?;
        let g2 = g
            .iter()
            .map(|g| g * 0.5)
            .collect::<candle_core::Result<Vec<_>>>()?;
        opt.step(&g2, 1e-3)?;
        vars.iter()
            .zip(weights)
            .map(|(v, w)| -> Result<Vec<f32>> {
                let w = w.to_device(dev)?;
                Ok((v.as_tensor() - w)?
                    .flatten_all()?
                    .to_device(&candle_core::Device::Cpu)?
                    .to_vec1()?)
            })
            .collect()
    };
    let reference = run(&candle_core::Device::Cpu)?;
    let candidate = run(device)?;
    let (mut d2, mut r2) = (0f64, 0f64);
    for (r, c) in reference.iter().zip(&candidate) {
        d2 += r
            .iter()
            .zip(c)
            .map(|(&x, &y)| ((x - y) as f64).powi(2))
            .sum::<f64>();
        r2 += norm(r).powi(2);
    }
    Ok((d2 / r2.max(f64::MIN_POSITIVE)).sqrt())
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// Compare `candidate` with `reference` (two loads of the same weights).
pub fn parity(reference: &Model, candidate: &Model, opts: &ParityOptions) -> Result<Parity> {
    if reference.config().vocab_size != candidate.config().vocab_size
        || reference.config().hidden_size != candidate.config().hidden_size
    {
        return Err(Error::msg(
            "parity: the two models differ in shape; load the same model twice (on two devices or dtypes)",
        ));
    }
    let vocab = reference.config().vocab_size;
    let mut rng = Rng::new(opts.seed);
    let items: Vec<Item> = (0..opts.batch)
        .map(|_| {
            let ids: Vec<u32> = (0..opts.seq).map(|_| rng.below(vocab) as u32).collect();
            Item::from(Encoded {
                labels: ids.iter().map(|&t| t as i32).collect(),
                input_ids: ids,
            })
        })
        .collect();
    let a = run_side(reference, &items, opts)?;
    let b = run_side(candidate, &items, opts)?;
    let diff = (&b.logits - &a.logits)?;
    let rel = |d: &Tensor, x: &Tensor| -> Result<f64> {
        let num = d.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let den = x.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        Ok((num / den.max(f64::MIN_POSITIVE)).sqrt())
    };
    let top_a: Vec<u32> = a.logits.argmax(D::Minus1)?.to_vec1()?;
    let top_b: Vec<u32> = b.logits.argmax(D::Minus1)?.to_vec1()?;
    let same = top_a.iter().zip(&top_b).filter(|(x, y)| x == y).count();
    let (mut d2, mut g2, mut min_cos) = (0f64, 0f64, 1f64);
    for (ga, gb) in a.grads.iter().zip(&b.grads) {
        let dot: f64 = ga.iter().zip(gb).map(|(&x, &y)| x as f64 * y as f64).sum();
        let (na, nb) = (norm(ga), norm(gb));
        min_cos = min_cos.min(dot / (na * nb).max(f64::MIN_POSITIVE));
        d2 += ga
            .iter()
            .zip(gb)
            .map(|(&x, &y)| ((x - y) as f64).powi(2))
            .sum::<f64>();
        g2 += na * na;
    }
    let describe = |m: &Model| {
        format!(
            "{} {}",
            super::device_name(&m.llama.device),
            dtype_name(m.llama.weights_dtype())
        )
    };
    Ok(Parity {
        reference: describe(reference),
        candidate: describe(candidate),
        dtype: candidate.llama.weights_dtype(),
        logits_rel: rel(&diff, &a.logits)?,
        infer_logits_rel: {
            let mut worst = 0f64;
            for i in 0..2 {
                let (x, y) = (a.infer.narrow(1, i, 1)?, b.infer.narrow(1, i, 1)?);
                worst = worst.max(rel(&(&y - &x)?, &x)?);
            }
            worst
        },
        logits_max_abs: diff.abs()?.max_all()?.to_scalar::<f32>()? as f64,
        top1_agreement: same as f64 / top_a.len().max(1) as f64,
        loss_reference: a.loss,
        loss_candidate: b.loss,
        grad_rel: (d2 / g2.max(f64::MIN_POSITIVE)).sqrt(),
        grad_min_cosine: min_cos,
        optimizer_rel: optimizer_agreement(&a.weights, &a.grads, &candidate.llama.device)?,
    })
}
