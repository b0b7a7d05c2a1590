//! A LoRA adapter: for each targeted projection W (out × in) of each block, two trainable
//! matrices A (r × in) and B (out × r), so the layer computes `x Wᵀ + s · (x Aᵀ) Bᵀ` with
//! s = alpha/r (or alpha/√r). A starts Kaiming-uniform as in PEFT (U(±1/√in)), B at zero, so a
//! fresh adapter leaves the model unchanged.
//!
//! Parameters are candle `Var`s in f32 on the model's device; clones share them.

use std::cell::RefCell;

use candle_core::{DType, Device, Tensor, Var};

use super::config::{LoraConfig, Target};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::rng::Rng;

/// The two low-rank factors of one projection.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// (r, in).
    pub a: Var,
    /// (out, r).
    pub b: Var,
}

/// Adapters for every block of one model.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: LoraConfig,
    /// Per block, per [`Target`] index: the factors when that projection is adapted.
    pub layers: Vec<[Option<LoraPair>; 7]>,
    /// Where the base model came from (PEFT's `base_model_name_or_path`).
    pub base_model: String,
    /// The chat template it was trained with, when known (chat uses it by default).
    pub template: Option<String>,
    /// LoftQ's compensation (`quant::lowrank` with more than one iteration) re-quantizes the
    /// base it was fitted to: that model, which the adapter must be used with.
    pub requantized_base: Option<crate::model::Model>,
}

/// Dropout on the adapter's input during training: the probability and the generator.
pub struct Dropout<'a> {
    pub p: f64,
    pub rng: &'a RefCell<Rng>,
}

impl Adapter {
    /// A fresh adapter for `llama`; A drawn from `seed`, B zero.
    pub fn new(llama: &Llama, config: LoraConfig, seed: u64, base_model: &str) -> Result<Adapter> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let device = &llama.device;
        let mut layers = Vec::with_capacity(llama.blocks.len());
        for block in &llama.blocks {
            let mut pairs: [Option<LoraPair>; 7] = Default::default();
            for t in &config.targets {
                let (out, inp) = block.linear(*t).dims();
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..config.rank * inp)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, inp), device)?)?;
                let b = Var::zeros((out, config.rank), DType::F32, device)?;
                pairs[t.index()] = Some(LoraPair { a, b });
            }
            layers.push(pairs);
        }
        Ok(Adapter {
            config,
            layers,
            base_model: base_model.to_string(),
            template: None,
            requantized_base: None,
        })
    }

    /// Check that this adapter was made for a model shaped like `llama` (`source` names the
    /// adapter in the error).
    pub fn check_fits(&self, llama: &Llama, source: &std::path::Path) -> Result<()> {
        if self.layers.len() > llama.blocks.len() {
            return Err(Error::msg(format!(
                "{}: the adapter has {} blocks but the model has {}: it belongs to another model",
                source.display(),
                self.layers.len(),
                llama.blocks.len()
            )));
        }
        for (i, pairs) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = &pairs[t.index()] {
                    let (out, inp) = llama.blocks[i].linear(t).dims();
                    let (r, a_in) = p.a.as_tensor().dims2()?;
                    let (b_out, _) = p.b.as_tensor().dims2()?;
                    if a_in != inp || b_out != out {
                        return Err(Error::msg(format!(
                            "{}: block {i} {}: the adapter maps {a_in} → {b_out} (rank {r}) but the model's layer is {inp} → {out}: it belongs to another model",
                            source.display(),
                            t.name()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The factors of `target` in block `layer`, when adapted.
    pub fn pair(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.layers.get(layer)?[target.index()].as_ref()
    }

    /// Every factor under its PEFT tensor name, in a fixed order (blocks, targets, A before B).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, pairs) in self.layers.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = &pairs[t.index()] {
                    let base = format!("base_model.model.model.layers.{i}.{}", t.path());
                    out.push((format!("{base}.lora_A.weight"), p.a.clone()));
                    out.push((format!("{base}.lora_B.weight"), p.b.clone()));
                }
            }
        }
        out
    }

    /// Trainable parameters.
    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The device the factors live on.
    pub fn device(&self) -> Device {
        self.named_vars()
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu)
    }

    /// The low-rank update `s · (x Aᵀ) Bᵀ` for `pair`: x (…, in) → (…, out) in x's dtype.
    pub fn delta(&self, pair: &LoraPair, x: &Tensor, dropout: Option<&Dropout>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims
            .last()
            .ok_or_else(|| Error::msg("lora: scalar input"))?;
        let rows = x.elem_count() / inp;
        let mut h = x.reshape((rows, inp))?.to_dtype(DType::F32)?;
        if let Some(d) = dropout.filter(|d| d.p > 0.0) {
            let keep = 1.0 - d.p;
            let mut rng = d.rng.borrow_mut();
            let mask: Vec<f32> = (0..rows * inp)
                .map(|_| {
                    if rng.next_f64() < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            h = (h * Tensor::from_vec(mask, (rows, inp), x.device())?)?;
        }
        // The scale goes on the narrow (M, r) product, the cheapest place for it.
        let low = (h.matmul(&pair.a.as_tensor().t()?)? * self.config.scale())?; // (M, r)
        let out = low.matmul(&pair.b.as_tensor().t()?)?; // (M, out)
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank ≥ 1") = out.dim(1)?;
        Ok(out.reshape(out_dims)?.to_dtype(x.dtype())?)
    }
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoRA adapter: rank {}, alpha {}{}, targets {}, {} blocks, {} trainable parameters",
            self.config.rank,
            self.config.alpha,
            if self.config.rslora { " (rsLoRA)" } else { "" },
            self.config
                .targets
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(","),
            self.layers.len(),
            self.num_params()
        )
    }
}
