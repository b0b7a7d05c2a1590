//! What a run trains, as LLaMA-Factory's `finetuning_type` says:
//!
//! - `lora`: low-rank factors beside the frozen weights ([`crate::lora::Adapter`]).
//! - `full`: every weight of the model (embeddings, norms, projections, the output head).
//! - `freeze`: the weights of the last `freeze_trainable_layers` blocks (the first ones when
//!   negative), all of their modules or only the `freeze_trainable_modules` named
//!   (`self_attn`, `mlp`, `input_layernorm`, `post_attention_layernorm`), plus any
//!   `freeze_extra_modules` outside the blocks (`embed_tokens`, `norm`, `lm_head`).
//!
//! Full and freeze train a copy of the model whose chosen weights are f32 [`Var`]s (quantized
//! weights are dequantized first); the training ops compute a weight's gradient exactly when it
//! is a variable (the frozen product in [`crate::model::frozen`], the norms in
//! [`crate::model::Llama`]), so frozen weights still cost nothing in the backward pass.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::lora::{Adapter, Target};
use crate::model::linear::Linear;
use crate::model::{Model, ModelParts};

/// LLaMA-Factory's `finetuning_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinetuningType {
    Lora,
    Full,
    Freeze,
}

impl FinetuningType {
    pub fn parse(s: &str) -> Result<FinetuningType> {
        match s {
            "lora" => Ok(FinetuningType::Lora),
            "full" => Ok(FinetuningType::Full),
            "freeze" => Ok(FinetuningType::Freeze),
            other => Err(Error::config(
                "finetuning_type",
                format!("\"{other}\" is not one of: lora, full, freeze"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FinetuningType::Lora => "lora",
            FinetuningType::Full => "full",
            FinetuningType::Freeze => "freeze",
        }
    }
}

/// The modules of a block that `freeze_trainable_modules` can name (the children of
/// `model.layers.N`), and the ones outside the blocks `freeze_extra_modules` can name.
pub const BLOCK_MODULES: &[&str] = &[
    "self_attn",
    "mlp",
    "input_layernorm",
    "post_attention_layernorm",
];
pub const EXTRA_MODULES: &[&str] = &["embed_tokens", "norm", "lm_head"];

/// The `freeze` settings, with LLaMA-Factory's defaults (the last 2 blocks, all modules).
#[derive(Debug, Clone, PartialEq)]
pub struct FreezeOptions {
    /// Positive: the last N blocks; negative: the first N.
    pub trainable_layers: i64,
    /// `["all"]`, or names from [`BLOCK_MODULES`].
    pub trainable_modules: Vec<String>,
    /// Names from [`EXTRA_MODULES`].
    pub extra_modules: Vec<String>,
}

impl Default for FreezeOptions {
    fn default() -> Self {
        FreezeOptions {
            trainable_layers: 2,
            trainable_modules: vec!["all".into()],
            extra_modules: Vec::new(),
        }
    }
}

impl FreezeOptions {
    /// Refuse unknown module names, listing the valid ones.
    pub fn validate(&self) -> Result<()> {
        if self.trainable_layers == 0 {
            return Err(Error::config(
                "freeze_trainable_layers",
                "must not be 0 (positive: the last N blocks; negative: the first N)",
            ));
        }
        for m in &self.trainable_modules {
            if m != "all" && !BLOCK_MODULES.contains(&m.as_str()) {
                return Err(Error::config(
                    "freeze_trainable_modules",
                    format!(
                        "\"{m}\" is not a module of a block; use all or some of: {}",
                        BLOCK_MODULES.join(", ")
                    ),
                ));
            }
        }
        for m in &self.extra_modules {
            if !EXTRA_MODULES.contains(&m.as_str()) {
                return Err(Error::config(
                    "freeze_extra_modules",
                    format!(
                        "\"{m}\" is not a module outside the blocks; use some of: {}",
                        EXTRA_MODULES.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the weight called `name` (Hugging Face naming) trains, in a model of
    /// `num_layers` blocks.
    pub fn selects(&self, name: &str, num_layers: usize) -> bool {
        let n = self.trainable_layers.unsigned_abs() as usize;
        let layers = if self.trainable_layers > 0 {
            num_layers.saturating_sub(n)..num_layers
        } else {
            0..n.min(num_layers)
        };
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let Some((index, module)) = rest.split_once('.') else {
                return false;
            };
            let in_layers = index.parse::<usize>().is_ok_and(|i| layers.contains(&i));
            let all = self.trainable_modules.iter().any(|m| m == "all");
            return in_layers
                && (all
                    || self
                        .trainable_modules
                        .iter()
                        .any(|m| module.split('.').next() == Some(m.as_str())));
        }
        self.extra_modules.iter().any(|m| {
            name.strip_prefix("model.")
                .unwrap_or(name)
                .split('.')
                .next()
                == Some(m.as_str())
        })
    }
}

/// Whether the weight `name` (Hugging Face naming) trains under a full (`freeze` None) or freeze
/// run of a model with `num_layers` blocks.
pub fn selector(freeze: Option<FreezeOptions>, num_layers: usize) -> impl Fn(&str) -> bool {
    move |name: &str| freeze.as_ref().is_none_or(|f| f.selects(name, num_layers))
}

/// The model's own weights in training: a copy of the model whose trained weights are `vars`
/// (Hugging Face names), shared with its layers.
#[derive(Debug, Clone)]
pub struct TrainedWeights {
    pub model: Model,
    pub vars: Vec<(String, Var)>,
}

/// What a run trains.
#[derive(Debug, Clone)]
pub enum Trainable {
    Lora(Adapter),
    Weights(TrainedWeights),
}

impl Trainable {
    /// The trained parameters under their names (the optimizer's order).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        match self {
            Trainable::Lora(a) => a.named_vars(),
            Trainable::Weights(w) => w.vars.clone(),
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.named_vars().into_iter().map(|(n, _)| n).collect()
    }

    pub fn num_params(&self) -> usize {
        self.named_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }

    /// The adapter (LoRA runs).
    pub fn adapter(&self) -> Option<&Adapter> {
        match self {
            Trainable::Lora(a) => Some(a),
            Trainable::Weights(_) => None,
        }
    }

    /// The model the forward pass runs: the base (LoRA) or the copy holding the trained weights.
    pub fn model<'a>(&'a self, base: &'a Model) -> &'a Model {
        match self {
            Trainable::Lora(_) => base,
            Trainable::Weights(w) => &w.model,
        }
    }
}

impl std::fmt::Display for Trainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trainable::Lora(a) => write!(f, "{a}"),
            Trainable::Weights(w) => write!(
                f,
                "{} weight tensors, {:.2} M parameters trained",
                w.vars.len(),
                self.num_params() as f64 / 1e6
            ),
        }
    }
}

/// A copy of `base` whose weights named by `selected` (Hugging Face names) are fresh f32 vars:
/// the start of a full or freeze run. With `values`, those vars take the given tensors instead
/// of the base's (a checkpoint's, on resume); every selected name must be there.
pub fn weights(
    base: &Model,
    selected: &dyn Fn(&str) -> bool,
    values: Option<(&HashMap<String, Tensor>, &std::path::Path)>,
) -> Result<TrainedWeights> {
    if base.llama.weights_dtype() != DType::F32 {
        return Err(Error::config(
            "finetuning_type",
            format!(
                "full and freeze fine-tuning train f32 weights, and this model holds {:?} ones; load it with #{{ dtype: \"f32\" }}",
                base.llama.weights_dtype()
            ),
        ));
    }
    let mut llama = base.llama.clone();
    let mut vars: Vec<(String, Var)> = Vec::new();
    let mut take = |name: String, current: &Tensor| -> Result<Option<Tensor>> {
        if !selected(&name) {
            return Ok(None);
        }
        let start = match values {
            Some((tensors, source)) => tensors.get(&name).cloned().ok_or_else(|| {
                Error::data(
                    source,
                    format!("tensor \"{name}\""),
                    "missing; the checkpoint does not match this run's trained weights (same finetuning_type and freeze settings), or resume from an earlier one",
                )
            })?,
            None => current.clone(),
        };
        if start.dims() != current.dims() {
            return Err(Error::msg(format!(
                "tensor \"{name}\" has shape {:?}, the model's is {:?}",
                start.dims(),
                current.dims()
            )));
        }
        let var = Var::from_tensor(
            &start
                .to_dtype(DType::F32)?
                .to_device(current.device())?
                .copy()?,
        )?;
        let t = var.as_tensor().clone();
        vars.push((name, var));
        Ok(Some(t))
    };

    if let Some(t) = take("model.embed_tokens.weight".into(), &llama.embed)? {
        llama.embed = t;
    }
    for (i, block) in llama.blocks.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        if let Some(t) = take(format!("{p}.input_layernorm.weight"), &block.attn_norm)? {
            block.attn_norm = t;
        }
        if let Some(t) = take(
            format!("{p}.post_attention_layernorm.weight"),
            &block.mlp_norm,
        )? {
            block.mlp_norm = t;
        }
        for target in Target::ALL {
            let lin = block.linear_mut(target);
            let weight_name = format!("{p}.{}.weight", target.path());
            let weight = take(weight_name, &lin.dense_weight()?)?;
            let bias = match &lin.bias {
                Some(b) => take(format!("{p}.{}.bias", target.path()), b)?,
                None => None,
            };
            if weight.is_some() || bias.is_some() {
                let w = match weight {
                    Some(w) => w,
                    None => lin.dense_weight()?,
                };
                *lin = Linear::dense(w, bias.or_else(|| lin.bias.clone()));
            }
        }
    }
    if let Some(t) = take("model.norm.weight".into(), &llama.norm)? {
        llama.norm = t;
    }
    if llama.config.tie_word_embeddings {
        // One weight in two places: gradients from both uses add up in the same var.
        if let Some((_, v)) = vars.iter().find(|(n, _)| n == "model.embed_tokens.weight") {
            llama.lm_head = Linear::dense(v.as_tensor().clone(), None);
        }
    } else if let Some(t) = take("lm_head.weight".into(), &llama.lm_head.dense_weight()?)? {
        llama.lm_head = Linear::dense(t, llama.lm_head.bias.clone());
    }
    if vars.is_empty() {
        return Err(Error::config(
            "freeze_trainable_layers",
            "selects no weight to train; check freeze_trainable_layers and freeze_trainable_modules",
        ));
    }
    let parts = ModelParts {
        llama,
        ..(**base).clone()
    };
    Ok(TrainedWeights {
        model: Model::new(parts),
        vars,
    })
}

/// `model` with every trained weight (a variable) replaced by a plain tensor holding the same
/// values: a finished model, which a later run treats as frozen.
pub fn frozen(model: &Model) -> Model {
    let plain = |t: &Tensor| {
        if t.is_variable() {
            t.detach()
        } else {
            t.clone()
        }
    };
    let mut llama = model.llama.clone();
    llama.embed = plain(&llama.embed);
    llama.norm = plain(&llama.norm);
    let relink = |lin: &mut Linear| {
        if let crate::model::linear::Weight::Dense(w) = &lin.weight {
            if w.is_variable() || lin.bias.as_ref().is_some_and(|b| b.is_variable()) {
                *lin = Linear::dense(plain(w), lin.bias.as_ref().map(plain));
            }
        }
    };
    for block in llama.blocks.iter_mut() {
        block.attn_norm = plain(&block.attn_norm);
        block.mlp_norm = plain(&block.mlp_norm);
        for target in Target::ALL {
            relink(block.linear_mut(target));
        }
    }
    relink(&mut llama.lm_head);
    Model::new(ModelParts {
        llama,
        ..(**model).clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_selects_the_last_blocks_and_the_named_modules() {
        let f = FreezeOptions::default();
        assert!(f.selects("model.layers.29.self_attn.q_proj.weight", 30));
        assert!(f.selects("model.layers.28.input_layernorm.weight", 30));
        assert!(!f.selects("model.layers.27.mlp.up_proj.weight", 30));
        assert!(!f.selects("model.embed_tokens.weight", 30));
        let g = FreezeOptions {
            trainable_layers: -1,
            trainable_modules: vec!["mlp".into()],
            extra_modules: vec!["norm".into()],
        };
        assert!(g.selects("model.layers.0.mlp.down_proj.weight", 30));
        assert!(!g.selects("model.layers.0.self_attn.o_proj.weight", 30));
        assert!(!g.selects("model.layers.1.mlp.down_proj.weight", 30));
        // "norm" is the final norm only, not every layer norm.
        assert!(g.selects("model.norm.weight", 30));
        assert!(!g.selects("model.layers.0.input_layernorm.weight", 30));
        let bad = FreezeOptions {
            trainable_modules: vec!["attention".into()],
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("self_attn"));
    }
}
