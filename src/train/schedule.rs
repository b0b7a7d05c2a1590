//! Learning-rate schedules, as Hugging Face's `get_scheduler` defines them: a multiplier of the
//! base rate for each optimizer step. `constant` ignores warmup (as in transformers);
//! `constant_with_warmup`, `linear` and `cosine` ramp up linearly over the warmup steps, then hold,
//! decay linearly to 0, or follow half a cosine to 0 at the last step.

use crate::error::{Error, Result};

/// The schedule kinds LLaMA-Factory users pick (`lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
}

impl Schedule {
    pub const NAMES: [&'static str; 4] = ["constant", "constant_with_warmup", "linear", "cosine"];

    pub fn parse(name: &str) -> Result<Schedule> {
        Ok(match name {
            "constant" => Schedule::Constant,
            "constant_with_warmup" => Schedule::ConstantWithWarmup,
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            _ => {
                return Err(Error::config(
                    "lr_scheduler_type",
                    format!(
                        "unknown schedule \"{name}\"; use one of {}",
                        Schedule::NAMES.join(", ")
                    ),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        Schedule::NAMES[self as usize]
    }

    /// The multiplier for the optimizer step with 0-based index `step` of `total`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        let (step, warmup, total) = (step as f64, warmup as f64, total as f64);
        let warming = step < warmup;
        let ramp = step / warmup.max(1.0);
        match self {
            Schedule::Constant => 1.0,
            Schedule::ConstantWithWarmup => {
                if warming {
                    ramp
                } else {
                    1.0
                }
            }
            Schedule::Linear => {
                if warming {
                    ramp
                } else {
                    ((total - step) / (total - warmup).max(1.0)).max(0.0)
                }
            }
            Schedule::Cosine => {
                if warming {
                    ramp
                } else {
                    let progress = (step - warmup) / (total - warmup).max(1.0);
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_transformers() {
        let c = Schedule::Cosine;
        assert_eq!(c.factor(0, 0, 10), 1.0);
        assert!((c.factor(5, 0, 10) - 0.5).abs() < 1e-12);
        assert!(c.factor(10, 0, 10).abs() < 1e-12);
        assert_eq!(c.factor(1, 4, 10), 0.25);
        let l = Schedule::Linear;
        assert_eq!(l.factor(2, 2, 10), 1.0);
        assert_eq!(l.factor(6, 2, 10), 0.5);
        assert_eq!(Schedule::Constant.factor(0, 5, 10), 1.0);
        assert_eq!(Schedule::ConstantWithWarmup.factor(0, 5, 10), 0.0);
        assert!(Schedule::parse("cosine_with_restarts").is_err());
    }
}
