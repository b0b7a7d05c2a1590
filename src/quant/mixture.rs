//! llama-quantize's mixtures: which ggml type each tensor of a llama model gets under a preset
//! (`llama_tensor_get_type` in `src/llama-quant.cpp`, specs/llamacpp.md §3), with its fallback
//! for rows that are not whole blocks (SmolLM2's 576-wide rows cannot hold 256-weight
//! super-blocks). Only the presets whose types tunelab can quantize are offered.
//!
//! For a plain llama model (no experts), per preset:
//! - the output layer (or the token embedding when they are tied): Q8_0 for the Q8_0 preset and
//!   when the row is not whole blocks of the preset's type, else Q6_K;
//! - `attn_v`: Q6_K under Q4_K_M where `use_more_bits(i, n)`;
//! - `ffn_down`: Q6_K under Q4_K_M where `use_more_bits(layer, n_layer)`;
//! - everything else: the preset's base type;
//! - then a row that is not whole blocks falls back: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and
//!   to F16 when even that does not fit.
//!
//! 1-D tensors and norms stay F32.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// A llama-quantize preset tunelab can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// llama.cpp's `general.file_type`.
    pub file_type: u32,
    /// The type most tensors get.
    pub base: &'static str,
}

/// The presets offered (llama-quantize's names).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "Q4_0",
        file_type: 2,
        base: "Q4_0",
    },
    Preset {
        name: "Q4_1",
        file_type: 3,
        base: "Q4_1",
    },
    Preset {
        name: "Q5_0",
        file_type: 8,
        base: "Q5_0",
    },
    Preset {
        name: "Q5_1",
        file_type: 9,
        base: "Q5_1",
    },
    Preset {
        name: "Q8_0",
        file_type: 7,
        base: "Q8_0",
    },
    Preset {
        name: "Q4_K_M",
        file_type: 15,
        base: "Q4_K",
    },
    Preset {
        name: "Q6_K",
        file_type: 18,
        base: "Q6_K",
    },
];

/// Presets llama-quantize has that need quantizers tunelab does not have yet.
const NOT_YET: &[&str] = &[
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q5_K_S", "Q5_K_M",
];

impl Preset {
    /// The preset called `name` (`Q4_K` is llama-quantize's alias of Q4_K_M).
    pub fn named(name: &str) -> Result<Preset> {
        let wanted = if name.eq_ignore_ascii_case("Q4_K") {
            "Q4_K_M"
        } else {
            name
        };
        if let Some(p) = PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(wanted)) {
            return Ok(*p);
        }
        let offered: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        if NOT_YET.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(Error::msg(format!(
                "preset {name} needs the Q2_K/Q3_K/Q5_K quantizers, which tunelab does not have yet; available: {}",
                offered.join(", ")
            )));
        }
        Err(Error::msg(format!(
            "\"{name}\" is not a quantization preset; use one of {}",
            offered.join(", ")
        )))
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third between.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).expect("a known ggml type")
}

/// The type `preset` gives the llama tensor `name` with row length `ne0` in a model of `n_layer`
/// layers and tied embeddings or not.
pub fn tensor_type(
    preset: &Preset,
    name: &str,
    ne: &[u64],
    n_layer: usize,
    tied: bool,
) -> GgmlType {
    if ne.len() < 2 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
        return ty("F32");
    }
    let ne0 = ne[0];
    let base = ty(preset.base);
    let layer = || -> usize {
        name.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
    let chosen = if is_output {
        if !ne0.is_multiple_of(base.block) {
            ty("Q8_0")
        } else if base.name != "Q8_0" {
            ty("Q6_K")
        } else {
            base
        }
    } else if (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
        && preset.name == "Q4_K_M"
        && use_more_bits(layer(), n_layer)
    {
        // (llama.cpp counts attn_v tensors and ffn_down layers; in a plain llama both are the
        // layer index.)
        ty("Q6_K")
    } else {
        base
    };
    fallback(chosen, ne0)
}

/// llama.cpp's `tensor_type_fallback` for a row of `ne0` weights.
pub fn fallback(t: GgmlType, ne0: u64) -> GgmlType {
    if ne0.is_multiple_of(t.block) {
        return t;
    }
    let next = match t.name {
        "Q4_K" => ty("Q5_0"),
        "Q5_K" => ty("Q5_1"),
        "Q6_K" => ty("Q8_0"),
        "Q2_K" | "Q3_K" => ty("Q4_0"),
        _ => t,
    };
    if ne0.is_multiple_of(next.block) {
        next
    } else {
        ty("F16")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_matches_llama_cpp_for_30_layers() {
        let more: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        // n/8 = 3, 7n/8 = 26: layers 0–2, 26–29, and 3 + 2 + 3k.
        assert_eq!(
            more,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }

    #[test]
    fn unknown_and_unavailable_presets_say_what_to_use() {
        let e = Preset::named("Q5_K_M").unwrap_err().to_string();
        assert!(e.contains("Q5_K") && e.contains("Q4_K_M"), "{e}");
        let e = Preset::named("Q9").unwrap_err().to_string();
        assert!(e.contains("not a quantization preset"), "{e}");
        assert_eq!(Preset::named("q4_k").unwrap().name, "Q4_K_M");
    }
}
