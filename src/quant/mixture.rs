//! llama-quantize's mixtures: which ggml type each tensor of a llama model gets under a preset
//! (`llama_tensor_get_type` in `src/llama-quant.cpp`, specs/llamacpp.md §3), with its fallback
//! for rows that are not whole blocks (SmolLM2's 576-wide rows cannot hold 256-weight
//! super-blocks). Every preset here is quantized by tunelab's reference quantizers
//! ([`super::quantize`], [`super::kquants`], [`super::kquants_low_bit`]), as llama-quantize does
//! without an importance matrix.
//!
//! For a plain llama model (no experts), with i the layer and n the number of layers:
//!
//! | tensor | rule |
//! |---|---|
//! | `output` (or `token_embd` when tied) | Q8_0 if the row is not whole blocks of the base type or the base is Q8_0, else Q6_K |
//! | `attn_v` | Q2_K: Q4_K if n_head/n_head_kv ≥ 4 else Q3_K; Q2_K_S: Q4_K if n_head/n_head_kv ≥ 4; Q3_K_M: Q5_K for i < 2, else Q4_K; Q3_K_L: Q5_K; Q4_K_S: Q5_K for i < 4; Q4_K_M, Q5_K_M: Q6_K where `use_more_bits(i, n)`; then, in a 70B (80 layers, grouped-query attention), Q3_K/Q4_K become Q5_K |
//! | `ffn_down` | Q2_K: Q3_K; Q2_K_S: Q4_K for i < n/8; Q3_K_M: Q5_K for i < n/16, else Q4_K; Q3_K_L: Q5_K; Q4_K_S: Q5_K for i < n/8; Q4_K_M, Q5_K_M: Q6_K where `use_more_bits(i, n)`; with an importance matrix, Q4_0 → Q4_1 and Q5_0 → Q5_1 for i < n/8 |
//! | `attn_output` | Q2_K: Q3_K; Q3_K_M: Q4_K; Q3_K_L: Q5_K |
//! | everything else (`attn_q`, `attn_k`, `ffn_gate`, `ffn_up`, an untied `token_embd`) | the preset's base type (llama.cpp's rules for `ffn_gate`/`ffn_up` are for IQ3_XS only) |
//!
//! Presets with no row in a cell leave that tensor at the base type: Q3_K_S, Q5_K_S and the
//! 32-weight presets change only the output. llama.cpp counts attn_v tensors and ffn_down layers
//! as it meets them; in a plain llama both counts are the layer index, which is what is used here.
//!
//! Then a row that is not whole blocks falls back (`tensor_type_fallback`): Q2_K, Q3_K → Q4_0,
//! Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and to F16 when even that does not fit. 1-D tensors
//! and norms stay F32.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// A llama-quantize preset tunelab can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_*`).
    pub file_type: u32,
    /// The type most tensors get.
    pub base: &'static str,
}

const fn preset(name: &'static str, file_type: u32, base: &'static str) -> Preset {
    Preset {
        name,
        file_type,
        base,
    }
}

/// The presets offered (llama-quantize's names and `LLAMA_FTYPE_MOSTLY_*` numbers).
pub const PRESETS: &[Preset] = &[
    preset("Q4_0", 2, "Q4_0"),
    preset("Q4_1", 3, "Q4_1"),
    preset("Q8_0", 7, "Q8_0"),
    preset("Q5_0", 8, "Q5_0"),
    preset("Q5_1", 9, "Q5_1"),
    preset("Q2_K", 10, "Q2_K"),
    preset("Q2_K_S", 21, "Q2_K"),
    preset("Q3_K_S", 11, "Q3_K"),
    preset("Q3_K_M", 12, "Q3_K"),
    preset("Q3_K_L", 13, "Q3_K"),
    preset("Q4_K_S", 14, "Q4_K"),
    preset("Q4_K_M", 15, "Q4_K"),
    preset("Q5_K_S", 16, "Q5_K"),
    preset("Q5_K_M", 17, "Q5_K"),
    preset("Q6_K", 18, "Q6_K"),
];

/// llama-quantize's aliases: a bare K type means its _M mixture.
const ALIASES: &[(&str, &str)] = &[("Q3_K", "Q3_K_M"), ("Q4_K", "Q4_K_M"), ("Q5_K", "Q5_K_M")];

impl Preset {
    /// The preset called `name` (case does not matter; `Q3_K`, `Q4_K`, `Q5_K` are
    /// llama-quantize's aliases of the _M presets).
    pub fn named(name: &str) -> Result<Preset> {
        let wanted = ALIASES
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
            .map_or(name, |(_, to)| *to);
        if let Some(p) = PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(wanted)) {
            return Ok(*p);
        }
        let offered: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        Err(Error::msg(format!(
            "\"{name}\" is not a quantization preset tunelab offers; use one of {} (tunelab does not write the IQ types)",
            offered.join(", ")
        )))
    }
}

/// What the mixture rules need to know about the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    /// Transformer layers.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Key/value heads (fewer than `n_head` under grouped-query attention).
    pub n_head_kv: usize,
    /// Whether the output layer reuses the token embedding.
    pub tied: bool,
}

impl LlamaShape {
    /// Query heads per key/value head (llama.cpp's `n_gqa`; 0 without key/value heads).
    pub fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// llama.cpp's `LLM_TYPE_70B` as llama-quantize infers it for a llama model.
    fn is_70b(&self) -> bool {
        self.n_layer == 80 && self.n_head != self.n_head_kv
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

impl Preset {
    /// Whether llama-quantize refuses this preset without an importance matrix (Q2_K_S: its
    /// Q2_K tensors are only good enough with one).
    pub fn needs_imatrix(&self) -> bool {
        self.name == "Q2_K_S"
    }
}

/// The type `preset` gives the llama tensor `name` (dimensions `ne`, row length first) in a
/// model of `shape`, quantized with an importance matrix or not (`has_imatrix`).
pub fn tensor_type(
    preset: &Preset,
    name: &str,
    ne: &[u64],
    shape: &LlamaShape,
    has_imatrix: bool,
) -> GgmlType {
    if ne.len() < 2 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
        return ty("F32");
    }
    let ne0 = ne[0];
    let base = ty(preset.base);
    let is_output = name == "output.weight" || (shape.tied && name == "token_embd.weight");
    let chosen = if is_output {
        if !ne0.is_multiple_of(base.block) || base.name == "Q8_0" {
            ty("Q8_0")
        } else {
            ty("Q6_K")
        }
    } else {
        let (i, n) = (layer_of(name), shape.n_layer);
        let rule = if name.ends_with("attn_v.weight") {
            let t = attn_v(preset.name, i, shape).unwrap_or(base.name);
            // A 70B's attn_v is 8× smaller than attn_q (8 heads share it): one more bit is cheap.
            Some(match t {
                "Q3_K" | "Q4_K" if shape.is_70b() => "Q5_K",
                t => t,
            })
        } else if name.ends_with("ffn_down.weight") {
            ffn_down(preset.name, i, n, has_imatrix)
        } else if name.ends_with("attn_output.weight") {
            attn_output(preset.name)
        } else {
            None
        };
        rule.map_or(base, ty)
    };
    fallback(chosen, ne0)
}

/// The layer index of `blk.N.…` (0 for tensors outside the layers).
fn layer_of(name: &str) -> usize {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `attn_v` of layer `i`, where the preset has a rule for it.
fn attn_v(preset: &str, i: usize, shape: &LlamaShape) -> Option<&'static str> {
    match preset {
        "Q2_K" if shape.n_gqa() >= 4 => Some("Q4_K"),
        "Q2_K" => Some("Q3_K"),
        "Q2_K_S" if shape.n_gqa() >= 4 => Some("Q4_K"),
        "Q3_K_M" if i < 2 => Some("Q5_K"),
        "Q3_K_M" => Some("Q4_K"),
        "Q3_K_L" => Some("Q5_K"),
        "Q4_K_M" | "Q5_K_M" if use_more_bits(i, shape.n_layer) => Some("Q6_K"),
        "Q4_K_S" if i < 4 => Some("Q5_K"),
        _ => None,
    }
}

/// `ffn_down` of layer `i` of `n`, where the preset has a rule for it.
fn ffn_down(preset: &str, i: usize, n: usize, has_imatrix: bool) -> Option<&'static str> {
    match preset {
        "Q2_K" => Some("Q3_K"),
        "Q2_K_S" if i < n / 8 => Some("Q4_K"),
        "Q3_K_M" if i < n / 16 => Some("Q5_K"),
        "Q3_K_M" => Some("Q4_K"),
        "Q3_K_L" => Some("Q5_K"),
        "Q4_K_M" | "Q5_K_M" if use_more_bits(i, n) => Some("Q6_K"),
        "Q4_K_S" if i < n / 8 => Some("Q5_K"),
        // With an importance matrix only: llama.cpp guards the first layers' ffn_down, which
        // "go crazy" in Q4_0/Q5_0 even with one, and keeps the same file as before without one.
        "Q4_0" if has_imatrix && i < n / 8 => Some("Q4_1"),
        "Q5_0" if has_imatrix && i < n / 8 => Some("Q5_1"),
        _ => None,
    }
}

/// `attn_output`, where the preset has a rule for it.
fn attn_output(preset: &str) -> Option<&'static str> {
    match preset {
        "Q2_K" => Some("Q3_K"),
        "Q3_K_M" => Some("Q4_K"),
        "Q3_K_L" => Some("Q5_K"),
        _ => None,
    }
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
    fn unknown_presets_say_what_to_use() {
        let e = Preset::named("IQ2_XXS").unwrap_err().to_string();
        assert!(
            e.contains("not a quantization preset") && e.contains("Q3_K_M"),
            "{e}"
        );
        assert_eq!(Preset::named("q4_k").unwrap().name, "Q4_K_M");
        assert_eq!(Preset::named("Q3_K").unwrap().name, "Q3_K_M");
        assert_eq!(Preset::named("Q5_K").unwrap().file_type, 17);
    }

    fn smollm2() -> LlamaShape {
        LlamaShape {
            n_layer: 30,
            n_head: 9,
            n_head_kv: 3,
            tied: true,
        }
    }

    /// The rules on shapes that hold super-blocks (rows of 1536), so no fallback hides them.
    #[test]
    fn k_presets_follow_llama_cpp_s_rules() {
        let shape = smollm2();
        let t = |preset: &str, name: &str| {
            tensor_type(
                &Preset::named(preset).unwrap(),
                name,
                &[1536, 576],
                &shape,
                false,
            )
            .name
        };
        assert_eq!(t("Q2_K", "blk.7.attn_v.weight"), "Q3_K"); // n_gqa 3 < 4
        assert_eq!(t("Q2_K", "blk.7.ffn_down.weight"), "Q3_K");
        assert_eq!(t("Q2_K", "blk.7.attn_output.weight"), "Q3_K");
        assert_eq!(t("Q2_K", "blk.7.ffn_up.weight"), "Q2_K");
        assert_eq!(t("Q3_K_S", "blk.0.ffn_down.weight"), "Q3_K");
        assert_eq!(t("Q3_K_M", "blk.1.attn_v.weight"), "Q5_K");
        assert_eq!(t("Q3_K_M", "blk.2.attn_v.weight"), "Q4_K");
        assert_eq!(t("Q3_K_M", "blk.0.ffn_down.weight"), "Q5_K"); // 30/16 = 1
        assert_eq!(t("Q3_K_M", "blk.1.ffn_down.weight"), "Q4_K");
        assert_eq!(t("Q3_K_M", "blk.1.attn_output.weight"), "Q4_K");
        assert_eq!(t("Q3_K_L", "blk.9.attn_v.weight"), "Q5_K");
        assert_eq!(t("Q3_K_L", "blk.9.attn_output.weight"), "Q5_K");
        assert_eq!(t("Q4_K_S", "blk.3.attn_v.weight"), "Q5_K");
        assert_eq!(t("Q4_K_S", "blk.4.attn_v.weight"), "Q4_K");
        assert_eq!(t("Q4_K_S", "blk.2.ffn_down.weight"), "Q5_K"); // 30/8 = 3
        assert_eq!(t("Q4_K_S", "blk.3.ffn_down.weight"), "Q4_K");
        assert_eq!(t("Q5_K_S", "blk.0.attn_v.weight"), "Q5_K");
        assert_eq!(t("Q5_K_M", "blk.5.ffn_down.weight"), "Q6_K");
        assert_eq!(t("Q5_K_M", "blk.6.ffn_down.weight"), "Q5_K");
        assert_eq!(t("Q5_K_M", "token_embd.weight"), "Q6_K");
        let gqa4 = LlamaShape {
            n_head_kv: 2,
            ..shape
        };
        let q2 = Preset::named("Q2_K").unwrap();
        let v = tensor_type(&q2, "blk.0.attn_v.weight", &[1536, 576], &gqa4, false);
        assert_eq!(v.name, "Q4_K");
        let llama70b = LlamaShape {
            n_layer: 80,
            n_head: 64,
            n_head_kv: 8,
            tied: false,
        };
        let q3s = Preset::named("Q3_K_S").unwrap();
        let v = tensor_type(&q3s, "blk.0.attn_v.weight", &[8192, 1024], &llama70b, false);
        assert_eq!(v.name, "Q5_K");
    }

    /// SmolLM2's 576-wide rows cannot hold super-blocks: every K type falls back.
    #[test]
    fn rows_that_are_not_super_blocks_fall_back() {
        let shape = smollm2();
        for (preset, name, want) in [
            ("Q2_K", "blk.0.attn_q.weight", "Q4_0"),
            ("Q2_K", "blk.0.attn_v.weight", "Q4_0"), // Q3_K → Q4_0
            ("Q3_K_L", "blk.0.attn_v.weight", "Q5_1"), // Q5_K → Q5_1
            ("Q4_K_S", "blk.0.attn_k.weight", "Q5_0"),
            ("Q5_K_M", "blk.0.attn_v.weight", "Q8_0"), // Q6_K → Q8_0
            ("Q3_K_M", "token_embd.weight", "Q8_0"),
        ] {
            let p = Preset::named(preset).unwrap();
            let t = tensor_type(&p, name, &[576, 576], &shape, false);
            assert_eq!(t.name, want, "{preset} {name}");
        }
    }

    /// What an importance matrix changes: the first n/8 ffn_down of Q4_0/Q5_0 go to Q4_1/Q5_1
    /// (llama.cpp's guard), and Q2_K_S exists (its Q2_K tensors need the matrix).
    #[test]
    fn an_importance_matrix_guards_the_first_ffn_down_layers() {
        let shape = smollm2();
        let down = |preset: &str, layer: usize, imatrix: bool| {
            let p = Preset::named(preset).unwrap();
            let name = format!("blk.{layer}.ffn_down.weight");
            tensor_type(&p, &name, &[1536, 576], &shape, imatrix).name
        };
        // 30 layers: n/8 = 3.
        assert_eq!(down("Q4_0", 0, true), "Q4_1");
        assert_eq!(down("Q4_0", 2, true), "Q4_1");
        assert_eq!(down("Q4_0", 3, true), "Q4_0");
        assert_eq!(down("Q4_0", 0, false), "Q4_0");
        assert_eq!(down("Q5_0", 1, true), "Q5_1");
        assert_eq!(down("Q4_1", 0, true), "Q4_1");
        assert_eq!(down("Q2_K_S", 0, true), "Q4_K");
        assert_eq!(down("Q2_K_S", 3, true), "Q2_K");
        let q2ks = Preset::named("Q2_K_S").unwrap();
        assert!(q2ks.needs_imatrix() && q2ks.file_type == 21);
        assert!(!Preset::named("Q2_K").unwrap().needs_imatrix());
    }
}
