//! The answer of `auto_mix` in the forms the rest of tunelab and llama.cpp use: the chosen type of
//! every weight with its bytes and damage score, the whole file's size, a [`QuantPlan`] that makes
//! `quantize_model` and `export_gguf_planned` produce exactly those types, and llama-quantize's
//! `--tensor-type-file`.
//!
//! Each weight gets a rule matching its name exactly (`^blk\.0\.attn_q\.weight$=Q4_0`), so no
//! preset rule, fallback or later pattern can change it. llama-quantize reads the file as
//! whitespace-separated `PATTERN=TYPE` items (`parse_tensor_type_file` in
//! `tools/quantize/quantize.cpp`; no comments), searches each pattern in the tensor name as a
//! regular expression, and applies the first match to every tensor of a quantized target —
//! token embedding and output included, unless `--token-embedding-type`/`--output-tensor-type`
//! are given. So `llama-quantize --tensor-type-file plan.txt in.gguf out.gguf Q4_K_M` writes the
//! same types (the final argument only labels the file).
//!
//! The plan's target labels the file (`general.file_type`): the preset named after the quantized
//! type that holds most weights (`Q4_K` → Q4_K_M), as llama.cpp guesses a file's type.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use regex::Regex;

use super::allocate::{Allocation, TensorCandidates};
use super::file_size::FileLayout;
use super::mixture::Preset;
use super::plan::{writable_type, QuantPlan, Target, TypeRule};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// The type chosen for one weight.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorChoice {
    /// llama.cpp's name (`blk.0.attn_q.weight`).
    pub name: String,
    pub ggml_type: GgmlType,
    /// Bytes it adds to the file ([`FileLayout::tensor_bytes`]).
    pub bytes: u64,
    /// Its measured damage in that type (lower is better).
    pub score: f64,
}

/// A type for every weight, and what the file comes to.
#[derive(Debug, Clone)]
pub struct AutoPlan {
    /// Every weight of the model, in file order.
    pub per_tensor: Vec<TensorChoice>,
    /// The whole file's size.
    pub bytes: u64,
    /// As llama.cpp reports it on loading ([`FileLayout::bits_per_weight`]).
    pub bits_per_weight: f64,
    /// What [`AutoPlan::to_quant_plan`] starts from (its other settings, such as an importance
    /// matrix, carry over); its target labels the file.
    base: QuantPlan,
}

impl AutoPlan {
    /// The plan of `per_tensor`, one choice for each weight of `layout` (any order), each a type
    /// tunelab writes whose blocks divide the weight's rows, with the bytes `layout` gives it.
    pub fn new(layout: &FileLayout, per_tensor: Vec<TensorChoice>) -> Result<AutoPlan> {
        let mut slots: Vec<Option<TensorChoice>> = vec![None; layout.weights().len()];
        let position: std::collections::HashMap<&str, usize> = layout
            .weights()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        for choice in per_tensor {
            let what = format!("auto_plan: {}", choice.name);
            let Some(&i) = position.get(choice.name.as_str()) else {
                return Err(Error::msg(format!(
                    "{what}: the model has no such weight; FileLayout::weights lists them"
                )));
            };
            writable_type(choice.ggml_type.name, &what)?;
            let bytes = layout.tensor_bytes(&choice.name, choice.ggml_type)?;
            if bytes != choice.bytes {
                return Err(Error::msg(format!(
                    "{what}: {} bytes given, but in {} it adds {bytes} to the file; take the bytes from FileLayout::tensor_bytes",
                    choice.bytes, choice.ggml_type.name
                )));
            }
            if slots[i].replace(choice).is_some() {
                return Err(Error::msg(format!(
                    "{what}: chosen twice; give one type per weight"
                )));
            }
        }
        let per_tensor = slots
            .into_iter()
            .zip(layout.weights())
            .map(|(slot, t)| {
                slot.ok_or_else(|| {
                    Error::msg(format!(
                        "auto_plan: no type chosen for {}; give one for every weight of FileLayout::weights",
                        t.name
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let types: BTreeMap<&str, GgmlType> = per_tensor
            .iter()
            .map(|c| (c.name.as_str(), c.ggml_type))
            .collect();
        let type_of = |name: &str| types[name];
        let bytes = layout.size_with(type_of)?;
        let bits_per_weight = layout.bits_per_weight(type_of);
        let target = label(layout, &per_tensor);
        Ok(AutoPlan {
            per_tensor,
            bytes,
            bits_per_weight,
            base: QuantPlan::new(target),
        })
    }

    /// The plan of the solver's `allocation` of `tensors` (whose candidates' bytes came from
    /// `layout`).
    pub fn from_allocation(
        layout: &FileLayout,
        tensors: &[TensorCandidates],
        allocation: &Allocation,
    ) -> Result<AutoPlan> {
        if tensors.len() != allocation.choice.len() {
            return Err(Error::msg(format!(
                "auto_plan: {} tensors but {} choices; pass the candidates the allocation was made from",
                tensors.len(),
                allocation.choice.len()
            )));
        }
        let per_tensor = tensors
            .iter()
            .zip(&allocation.choice)
            .map(|(t, &k)| {
                let c = t.candidates.get(k).ok_or_else(|| {
                    Error::msg(format!("auto_plan: {}: no candidate {k}", t.name))
                })?;
                Ok(TensorChoice {
                    name: t.name.clone(),
                    ggml_type: c.ggml_type,
                    bytes: c.bytes,
                    score: c.damage,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        AutoPlan::new(layout, per_tensor)
    }

    /// The same choices over `base`'s other settings (an importance matrix, say); `base`'s
    /// target, rules and per-tensor overrides are replaced.
    pub fn with_base(mut self, base: QuantPlan) -> AutoPlan {
        let target = self.base.target;
        self.base = QuantPlan { target, ..base };
        self
    }

    /// The target that labels the file.
    pub fn target(&self) -> Target {
        self.base.target
    }

    /// Total damage score of the choices.
    pub fn score(&self) -> f64 {
        self.per_tensor.iter().map(|c| c.score).sum()
    }

    /// A plan giving every weight exactly its chosen type (one exact-name rule each).
    pub fn to_quant_plan(&self) -> QuantPlan {
        let mut plan = self.base.clone();
        plan.rules = self
            .per_tensor
            .iter()
            .map(|c| TypeRule {
                pattern: Regex::new(&exact(&c.name)).expect("an escaped name is a valid pattern"),
                ty: c.ggml_type,
            })
            .collect();
        plan.output_type = None;
        plan.token_embd_type = None;
        plan.pure = false;
        plan
    }

    /// The `--tensor-type-file` text: one `PATTERN=TYPE` line per weight.
    pub fn tensor_type_file(&self) -> String {
        self.per_tensor
            .iter()
            .map(|c| format!("{}={}\n", exact(&c.name), c.ggml_type.name))
            .collect()
    }

    /// Write [`AutoPlan::tensor_type_file`] to `path` (atomically), for
    /// `llama-quantize --tensor-type-file` or tunelab's `read_rules`.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, self.tensor_type_file().as_bytes())
    }

    /// Counts of each chosen type per kind of tensor, as a table:
    ///
    /// ```text
    /// kind         Q4_0  Q8_0   F16
    /// token_embd      .     1     .
    /// attn_q          3     1     .
    /// ```
    pub fn summary(&self) -> String {
        let mut types: Vec<GgmlType> = Vec::new();
        let mut kinds: Vec<(&str, BTreeMap<&str, usize>)> = Vec::new();
        for c in &self.per_tensor {
            if !types.contains(&c.ggml_type) {
                types.push(c.ggml_type);
            }
            let k = kind(&c.name);
            let row = match kinds.iter().position(|(n, _)| *n == k) {
                Some(i) => &mut kinds[i].1,
                None => {
                    kinds.push((k, BTreeMap::new()));
                    &mut kinds.last_mut().expect("just pushed").1
                }
            };
            *row.entry(c.ggml_type.name).or_default() += 1;
        }
        types.sort_by(|a, b| a.bits_per_weight().total_cmp(&b.bits_per_weight()));
        kinds.sort_by_key(|(k, _)| {
            KIND_ORDER
                .iter()
                .position(|o| o == k)
                .unwrap_or(KIND_ORDER.len())
        });
        let width = kinds.iter().map(|(k, _)| k.len()).max().unwrap_or(4).max(4);
        let mut out = format!("{:width$}", "kind");
        for t in &types {
            let _ = write!(out, " {:>7}", t.name);
        }
        out.push('\n');
        for (k, counts) in &kinds {
            let _ = write!(out, "{k:width$}");
            for t in &types {
                match counts.get(t.name) {
                    Some(n) => write!(out, " {n:>7}"),
                    None => write!(out, " {:>7}", "."),
                }
                .expect("writing to a String");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{} bytes ({:.2} MB), {:.2} bits per weight, score {:.6}",
            self.bytes,
            self.bytes as f64 / 1e6,
            self.bits_per_weight,
            self.score()
        );
        out
    }
}

/// The order of tensor kinds in the summary: as a block runs, embedding first, output last.
const KIND_ORDER: &[&str] = &[
    "token_embd",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "output",
];

/// `blk.3.attn_q.weight` → `attn_q`; `token_embd.weight` → `token_embd`.
fn kind(name: &str) -> &str {
    let name = name.strip_suffix(".weight").unwrap_or(name);
    match name.strip_prefix("blk.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, k)| k),
        None => name,
    }
}

/// A pattern matching exactly `name`.
fn exact(name: &str) -> String {
    format!("^{}$", regex::escape(name))
}

/// The target labelling a file of these choices: the preset of the quantized type holding most
/// weights, or the layout's own target when none is (a float layout keeps its float target, so
/// the file's metadata, and size, stay what the layout computed).
fn label(layout: &FileLayout, choices: &[TensorChoice]) -> Target {
    if !matches!(layout.target(), Target::Preset(_)) {
        return layout.target();
    }
    let mut weights: BTreeMap<&str, u64> = BTreeMap::new();
    for c in choices {
        let n = layout.weight(&c.name).map_or(0, |t| t.elements());
        *weights.entry(c.ggml_type.name).or_default() += n;
    }
    let mut ranked: Vec<(&str, u64)> = weights.into_iter().collect();
    ranked.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    ranked
        .into_iter()
        .find_map(|(name, _)| Preset::named(name).ok())
        .map_or(layout.target(), Target::Preset)
}
