//! AdamW exactly as PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments),
//! plus global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`. The moments are plain
//! tensors so checkpoints can save and restore them bit for bit. On a GPU the update of each
//! parameter is one fused kernel ([`super::adamw_cuda`]); this composed update is its reference.

use candle_core::{Tensor, Var};

use crate::error::Result;

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

/// The optimizer and its state for a list of parameters.
pub struct AdamW {
    pub params: AdamParams,
    vars: Vec<Var>,
    /// First and second moments, one per var.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Steps taken.
    pub t: usize,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, params: AdamParams) -> Result<AdamW> {
        // Two separate allocations: the GPU update writes the moments in place.
        let zeros = || {
            vars.iter()
                .map(|v| v.as_tensor().zeros_like())
                .collect::<candle_core::Result<Vec<_>>>()
        };
        let (m, v) = (zeros()?, zeros()?);
        Ok(AdamW {
            params,
            vars,
            m,
            v,
            t: 0,
        })
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to the i-th var.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bias1 = 1.0 - p.beta1.powi(self.t as i32);
        let bias2 = 1.0 - p.beta2.powi(self.t as i32);
        let step_size = lr / bias1;
        let bias2_sqrt = bias2.sqrt();
        for (i, (var, g)) in self.vars.iter().zip(grads).enumerate() {
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
                if super::adamw_cuda::step(var.as_tensor(), g, &self.m[i], &self.v[i], fused)? {
                    continue;
                }
            }
            let m = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let mut w = var.as_tensor().clone();
            if p.weight_decay != 0.0 {
                w = (w * (1.0 - lr * p.weight_decay))?;
            }
            let denom = ((v.sqrt()? / bias2_sqrt)? + p.eps)?;
            let w = (w - (m.div(&denom)? * step_size)?)?;
            var.set(&w)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
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
        let mut opt = AdamW::new(vec![var.clone()], AdamParams::default()).unwrap();
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
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let v: Vec<f32> = g[0].to_vec1().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
