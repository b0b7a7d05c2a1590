//! What a LoRA adapter adapts and how strongly: rank r, alpha (the update is scaled by alpha/r,
//! or alpha/√r with rsLoRA), dropout on the adapter's input, and the target projections.
//! Defaults are LLaMA-Factory's (rank 8, alpha 16, dropout 0, every linear layer but lm_head).

use crate::error::{Error, Result};

/// A linear projection inside a Llama block, by its Hugging Face / PEFT module name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    /// Every target, in the order of a block's forward pass.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module name (`q_proj`, …) as PEFT's `target_modules` lists it.
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// llama.cpp's name of the projection inside a block (`attn_q`, `ffn_up`, …).
    pub fn gguf_part(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// The module path inside a block (`self_attn.q_proj`, `mlp.up_proj`, …).
    pub fn path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// Index into per-block arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parse a module name (`q_proj` or `q`).
    pub fn parse(name: &str) -> Option<Target> {
        let name = name.trim();
        Target::ALL
            .into_iter()
            .find(|t| t.name() == name || t.name().trim_end_matches("_proj") == name)
    }
}

/// The shape of an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Target>,
    /// Scale by alpha/√r instead of alpha/r.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
            rslora: false,
        }
    }
}

impl LoraConfig {
    /// The factor the low-rank update is multiplied by.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Parse a target list: "all", or names separated by commas.
    pub fn parse_targets(names: &[String]) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for name in names.iter().flat_map(|n| n.split(',')) {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if name == "all" {
                return Ok(Target::ALL.to_vec());
            }
            let t = Target::parse(name).ok_or_else(|| {
                Error::config(
                    "lora.targets",
                    format!(
                        "unknown module \"{name}\"; use \"all\" or some of {}",
                        Target::ALL.map(Target::name).join(", ")
                    ),
                )
            })?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if out.is_empty() {
            return Err(Error::config(
                "lora.targets",
                "no target modules; use \"all\" or a list such as [\"q_proj\", \"v_proj\"]",
            ));
        }
        out.sort();
        Ok(out)
    }

    /// Check the numbers make sense.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::config("lora.rank", "must be at least 1"));
        }
        if self.alpha.is_nan() || self.alpha <= 0.0 {
            return Err(Error::config("lora.alpha", "must be positive"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("lora.dropout", "must be in [0, 1)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_all_lists_and_short_names() {
        assert_eq!(LoraConfig::parse_targets(&["all".into()]).unwrap().len(), 7);
        assert_eq!(
            LoraConfig::parse_targets(&["v_proj, q".into()]).unwrap(),
            vec![Target::Q, Target::V]
        );
        let err = LoraConfig::parse_targets(&["qproj".into()]).unwrap_err();
        assert!(err.to_string().contains("q_proj, k_proj"), "{err}");
    }

    #[test]
    fn scale_is_alpha_over_rank_or_its_root() {
        let mut c = LoraConfig::default();
        assert_eq!(c.scale(), 2.0);
        c.rslora = true;
        c.rank = 16;
        assert_eq!(c.scale(), 4.0);
    }
}
