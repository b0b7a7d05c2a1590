//! AdamW exactly as PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments),
//! plus global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`. The moments are plain
//! tensors so checkpoints can save and restore them bit for bit. On a GPU the update of each
//! parameter is one fused kernel ([`super::adamw_cuda`]); this composed update is its reference.
//!
//! `adamw_8bit` is bitsandbytes' `AdamW8bit`: the same update, with the moments of every large
//! parameter stored as 8-bit block-wise codes between steps ([`Moments::Int8`]).
//!
//! `sgd` is `torch.optim.SGD` as Hugging Face's `optim: sgd` builds it (no momentum, weight
//! decay added to the gradient): w ← w − lr·(g + λ·w). It keeps no state, and it is where
//! compressed gradients show their cost plainly — AdamW divides every element's step by its own
//! running magnitude, which makes it close to a sign method already.

use candle_core::{Tensor, Var};
use rayon::prelude::*;

use super::dynamic_map::{dynamic_map, Blockwise8};
use crate::error::{Error, Result};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Where a parameter's two moments live.
#[derive(Debug, Clone)]
pub enum Moments {
    /// Plain f32 tensors on the parameter's device (8 bytes per parameter).
    F32 { m: Tensor, v: Tensor },
    /// bitsandbytes' 8-bit block-wise storage (about 2 bytes per parameter): the first moment
    /// in the signed dynamic map, the second in the unsigned one ([`super::dynamic_map`]). Each
    /// step dequantizes both, updates in f32 and quantizes them again, on the host.
    Int8 { m: Blockwise8, v: Blockwise8 },
}

impl Moments {
    /// Bytes the two moments hold.
    pub fn bytes(&self) -> usize {
        match self {
            Moments::F32 { m, v } => 4 * (m.elem_count() + v.elem_count()),
            Moments::Int8 { m, v } => m.bytes() + v.bytes(),
        }
    }
}

/// 8-bit moments: the block size, and the two code maps.
struct EightBit {
    block: usize,
    signed: Vec<f32>,
    unsigned: Vec<f32>,
}

/// Parameters smaller than this keep f32 moments under 8-bit AdamW (bitsandbytes'
/// `min_8bit_size`): their state is small and they are often sensitive (norms, biases).
pub const MIN_8BIT_SIZE: usize = 4096;

/// The update an [`Optimizer`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    AdamW,
    /// Plain SGD: no state.
    Sgd,
}

/// The optimizer and its state for a list of parameters.
pub struct Optimizer {
    pub rule: Rule,
    pub params: AdamParams,
    vars: Vec<Var>,
    /// First and second moments, one pair per var (none under SGD).
    pub moments: Vec<Moments>,
    eight_bit: Option<EightBit>,
    /// Steps taken.
    pub t: usize,
}

impl Optimizer {
    /// AdamW with f32 moments.
    pub fn new(vars: Vec<Var>, params: AdamParams) -> Result<Optimizer> {
        // Two separate allocations: the GPU update writes the moments in place.
        let moments = vars
            .iter()
            .map(|var| {
                Ok(Moments::F32 {
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Optimizer {
            rule: Rule::AdamW,
            params,
            vars,
            moments,
            eight_bit: None,
            t: 0,
        })
    }

    /// bitsandbytes' `AdamW8bit`: moments of parameters with at least [`MIN_8BIT_SIZE`]
    /// elements stored as 8-bit codes in blocks of `block` values.
    pub fn new_8bit(vars: Vec<Var>, params: AdamParams, block: usize) -> Result<Optimizer> {
        let mut optim = Optimizer::new(vars, params)?;
        let signed = dynamic_map(true);
        let unsigned = dynamic_map(false);
        for (var, moments) in optim.vars.iter().zip(optim.moments.iter_mut()) {
            let n = var.as_tensor().elem_count();
            if n >= MIN_8BIT_SIZE {
                *moments = Moments::Int8 {
                    m: Blockwise8::zeros(n, block, &signed),
                    v: Blockwise8::zeros(n, block, &unsigned),
                };
            }
        }
        optim.eight_bit = Some(EightBit {
            block,
            signed,
            unsigned,
        });
        Ok(optim)
    }

    /// Plain SGD (`params.weight_decay` is its L2 term; the betas and eps go unused).
    pub fn sgd(vars: Vec<Var>, params: AdamParams) -> Optimizer {
        Optimizer {
            rule: Rule::Sgd,
            params,
            vars,
            moments: Vec::new(),
            eight_bit: None,
            t: 0,
        }
    }

    /// The optimizer a run's `optim` setting names, over `vars`.
    pub fn for_setting(
        optim: super::config::Optim,
        vars: Vec<Var>,
        params: AdamParams,
    ) -> Result<Optimizer> {
        match optim {
            super::config::Optim::AdamW => Optimizer::new(vars, params),
            super::config::Optim::AdamW8bit { block } => Optimizer::new_8bit(vars, params, block),
            super::config::Optim::Sgd => Ok(Optimizer::sgd(vars, params)),
        }
    }

    /// Bytes of optimizer state (both moments of every parameter).
    pub fn state_bytes(&self) -> usize {
        self.moments.iter().map(Moments::bytes).sum()
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to the i-th var.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let p = self.params;
        if self.rule == Rule::Sgd {
            for (var, g) in self.vars.iter().zip(grads) {
                let w = var.as_tensor();
                let g = if p.weight_decay != 0.0 {
                    (g + (w * p.weight_decay)?)?
                } else {
                    g.clone()
                };
                var.set(&(w - (g * lr)?)?)?;
            }
            return Ok(());
        }
        let bias1 = 1.0 - p.beta1.powi(self.t as i32);
        let bias2 = 1.0 - p.beta2.powi(self.t as i32);
        let step_size = lr / bias1;
        let bias2_sqrt = bias2.sqrt();
        for (i, (var, g)) in self.vars.iter().zip(grads).enumerate() {
            let (m, v) = match &mut self.moments[i] {
                Moments::F32 { m, v } => (m, v),
                Moments::Int8 { m, v } => {
                    let maps = self.eight_bit.as_ref().expect("8-bit moments have maps");
                    step_8bit(var, g, m, v, maps, p, lr, step_size, bias2_sqrt)?;
                    continue;
                }
            };
            #[cfg(feature = "cuda")]
            if fused_on_gpu() {
                let fused = super::adamw_cuda::Step {
                    beta1: p.beta1 as f32,
                    beta2: p.beta2 as f32,
                    step_size: step_size as f32,
                    bias2_sqrt: bias2_sqrt as f32,
                    eps: p.eps as f32,
                    decay: (1.0 - lr * p.weight_decay) as f32,
                };
                if super::adamw_cuda::step(var.as_tensor(), g, m, v, fused)? {
                    continue;
                }
            }
            let new_m = ((&*m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let new_v = ((&*v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let mut w = var.as_tensor().clone();
            if p.weight_decay != 0.0 {
                w = (w * (1.0 - lr * p.weight_decay))?;
            }
            let denom = ((new_v.sqrt()? / bias2_sqrt)? + p.eps)?;
            let w = (w - (new_m.div(&denom)? * step_size)?)?;
            var.set(&w)?;
            *m = new_m;
            *v = new_v;
        }
        Ok(())
    }

    /// The state as named tensors for a checkpoint, `names[i]` naming the i-th var:
    /// `exp_avg.NAME` / `exp_avg_sq.NAME` (f32, or u8 codes with `….absmax` beside them).
    pub fn state_tensors(&self, names: &[String]) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, moments) in names.iter().zip(&self.moments) {
            match moments {
                Moments::F32 { m, v } => {
                    out.push((format!("exp_avg.{name}"), m.clone()));
                    out.push((format!("exp_avg_sq.{name}"), v.clone()));
                }
                Moments::Int8 { m, v } => {
                    for (key, q) in [("exp_avg", m), ("exp_avg_sq", v)] {
                        let cpu = &candle_core::Device::Cpu;
                        out.push((
                            format!("{key}.{name}"),
                            Tensor::from_slice(&q.codes, q.codes.len(), cpu)?,
                        ));
                        out.push((
                            format!("{key}.{name}.absmax"),
                            Tensor::from_slice(&q.absmax, q.absmax.len(), cpu)?,
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Put a checkpoint's state back ([`Optimizer::state_tensors`]' names); `source` names the file
    /// in errors.
    pub fn restore(
        &mut self,
        names: &[String],
        tensors: &std::collections::HashMap<String, Tensor>,
        steps: usize,
        source: &std::path::Path,
    ) -> Result<()> {
        let get = |key: String| {
            tensors.get(&key).cloned().ok_or_else(|| {
                Error::data(
                    source,
                    format!("tensor \"{key}\""),
                    "missing; the checkpoint is incomplete or was written by another optimizer (optim must match), resume from an earlier one",
                )
            })
        };
        for (name, moments) in names.iter().zip(self.moments.iter_mut()) {
            match moments {
                Moments::F32 { m, v } => {
                    *m = get(format!("exp_avg.{name}"))?.to_device(m.device())?;
                    *v = get(format!("exp_avg_sq.{name}"))?.to_device(v.device())?;
                }
                Moments::Int8 { m, v } => {
                    for (key, q) in [("exp_avg", m), ("exp_avg_sq", v)] {
                        let codes = get(format!("{key}.{name}"))?;
                        let absmax = get(format!("{key}.{name}.absmax"))?;
                        let (codes, absmax) = (
                            codes.flatten_all()?.to_vec1::<u8>(),
                            absmax.flatten_all()?.to_vec1::<f32>(),
                        );
                        match (codes, absmax) {
                            (Ok(c), Ok(a)) if c.len() == q.codes.len() && a.len() == q.absmax.len() => {
                                q.codes = c;
                                q.absmax = a;
                            }
                            _ => {
                                return Err(Error::data(
                                    source,
                                    format!("tensor \"{key}.{name}\""),
                                    "is not this parameter's 8-bit state (adamw_8bit_block must match the run that wrote it)",
                                ))
                            }
                        }
                    }
                }
            }
        }
        self.t = steps;
        Ok(())
    }
}

/// One 8-bit AdamW update of `var`: dequantize the moments, update in f32 exactly as the f32
/// optimizer does, quantize them again.
#[allow(clippy::too_many_arguments)]
fn step_8bit(
    var: &Var,
    grad: &Tensor,
    m: &mut Blockwise8,
    v: &mut Blockwise8,
    maps: &EightBit,
    p: AdamParams,
    lr: f64,
    step_size: f64,
    bias2_sqrt: f64,
) -> Result<()> {
    let shape = var.as_tensor().shape().clone();
    let device = var.as_tensor().device().clone();
    let g = grad
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let mut w = var
        .as_tensor()
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let mut m32 = m.dequantize(&maps.signed);
    let mut v32 = v.dequantize(&maps.unsigned);
    // 1 − β in f64 first, as PyTorch and the f32 optimizer above take it (rounding 0.999 to f32
    // before subtracting would move 1 − β₂ by 1.3e-5 of itself).
    let (b1, b2) = (p.beta1 as f32, p.beta2 as f32);
    let (c1, c2) = ((1.0 - p.beta1) as f32, (1.0 - p.beta2) as f32);
    let decay = (1.0 - lr * p.weight_decay) as f32;
    let (step_size, bias2_sqrt, eps) = (step_size as f32, bias2_sqrt as f32, p.eps as f32);
    const CHUNK: usize = 1 << 14;
    w.par_chunks_mut(CHUNK)
        .zip(m32.par_chunks_mut(CHUNK))
        .zip(v32.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((w, m), v), g)| {
            for i in 0..w.len() {
                m[i] = m[i] * b1 + g[i] * c1;
                v[i] = v[i] * b2 + g[i] * g[i] * c2;
                if p.weight_decay != 0.0 {
                    w[i] *= decay;
                }
                w[i] -= step_size * (m[i] / (v[i].sqrt() / bias2_sqrt + eps));
            }
        });
    *m = Blockwise8::quantize(&m32, maps.block, &maps.signed);
    *v = Blockwise8::quantize(&v32, maps.block, &maps.unsigned);
    let w = Tensor::from_vec(w, shape, &device)?.to_dtype(var.as_tensor().dtype())?;
    var.set(&w)?;
    Ok(())
}

/// Whether the GPU runs the fused update (`TUNELAB_CUDA_FUSED_ADAMW=0` composes it, to compare).
#[cfg(feature = "cuda")]
fn fused_on_gpu() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TUNELAB_CUDA_FUSED_ADAMW").is_none_or(|v| v != "0"))
}

/// Scale `grads` so their global L2 norm is at most `max_norm` (0 = no clipping); returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    // One read back for all of them (on a GPU each read waits for the device).
    let squares = grads
        .iter()
        .map(|g| g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let total: f64 = if squares.is_empty() {
        0.0
    } else {
        Tensor::stack(&squares, 0)?.to_vec1::<f64>()?.iter().sum()
    };
    let norm = total.sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_adamw_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        let var = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(vec![var.clone()], AdamParams::default()).unwrap();
        let g = Tensor::new(&[0.5f32, -4.0, 0.0], &Device::Cpu).unwrap();
        opt.step(&[g], 0.1).unwrap();
        let w: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        // Bias-corrected first step: m̂/√v̂ = sign(g) (and 0 for a zero gradient).
        assert!(
            (w[0] - 0.9).abs() < 1e-6 && (w[1] + 1.9).abs() < 1e-6 && w[2] == 3.0,
            "{w:?}"
        );
    }

    #[test]
    fn an_sgd_step_is_lr_times_the_gradient_plus_decay_and_keeps_no_state() {
        let var = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let params = AdamParams {
            weight_decay: 0.5,
            ..AdamParams::default()
        };
        let mut opt = Optimizer::sgd(vec![var.clone()], params);
        let g = Tensor::new(&[0.5f32, -4.0, 0.0], &Device::Cpu).unwrap();
        opt.step(&[g], 0.1).unwrap();
        let w: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        // w − 0.1·(g + 0.5·w): 1 − 0.1·1.0, −2 − 0.1·(−5), 3 − 0.1·1.5.
        for (got, want) in w.iter().zip([0.9f32, -1.5, 2.85]) {
            assert!((got - want).abs() < 1e-6, "{w:?}");
        }
        assert_eq!(opt.state_bytes(), 0);
        assert!(opt.state_tensors(&["w".into()]).unwrap().is_empty());
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let v: Vec<f32> = g[0].to_vec1().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
