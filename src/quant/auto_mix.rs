//! Automatic mixed precision: a type per tensor so that the whole GGUF file fits a budget and the
//! measured damage is least. Three steps, each its own module:
//!
//! 1. candidates per tensor — the types asked for (or [`DEFAULT_CANDIDATES`]) that fit its rows,
//!    leaving out, for the tensors stored in the model's own type, that type and the types whose
//!    grid contains it: re-quantizing a Q4_1 weight to Q4_1 (or to Q5_1, whose grid holds Q4_1's)
//!    can be lossless, and an allocator must not win by exploiting that;
//! 2. damage per tensor and candidate, measured one of three ways ([`super::measure`]);
//! 3. the budget solver ([`super::allocate`]) on exact byte counts ([`super::file_size`]).
//!
//! The result is an [`AutoPlan`]: the chosen type of every tensor, as a plan that quantizes a
//! model or exports a file exactly so, and as a llama-quantize `--tensor-type-file`.

use std::sync::Arc;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::model::perplexity::Windows;
use crate::model::Model;

use super::allocate::{allocate, Allocation, Candidate, TensorCandidates};
use super::auto_plan::AutoPlan;
use super::file_size::FileLayout;
use super::measure::{DamageTable, Measure, DEFAULT_CANDIDATES};
use super::measure_gradient::measure_gradient;
use super::measure_kld::{measure_kld, KlReference};
use super::measure_proxy::measure_proxy;
use super::mixture::Preset;
use super::plan::{Importance, QuantPlan, Target};
use super::weights::{dense_reference, storage_types, weight_tensors};

/// How big the file may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// The whole file, in bytes.
    Bytes(u64),
    /// The whole file's bits over every weight in it (norms included): a little above the
    /// figure llama.cpp prints on loading, which leaves out the header.
    BitsPerWeight(f64),
}

impl Budget {
    /// `"105MB"`, `"98.5 MiB"`, `"1.2GB"`, `"123456"` (bytes): decimal units are powers of 1000,
    /// binary ones (KiB, MiB, GiB) of 1024.
    pub fn parse_size(text: &str) -> Result<Budget> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (t[..split].trim(), t[split..].trim());
        let value: f64 = number.parse().map_err(|_| {
            Error::msg(format!(
                "budget \"{text}\": expected a size such as \"105MB\", \"98.5MiB\" or a number of bytes"
            ))
        })?;
        let scale = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kb" | "k" => 1e3,
            "mb" | "m" => 1e6,
            "gb" | "g" => 1e9,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            _ => {
                return Err(Error::msg(format!(
                    "budget \"{text}\": unknown unit \"{unit}\"; use B, KB, MB, GB, KiB, MiB or GiB"
                )))
            }
        };
        if value.is_nan() || value <= 0.0 || !value.is_finite() {
            return Err(Error::msg(format!("budget \"{text}\": must be above zero")));
        }
        Ok(Budget::Bytes((value * scale).round() as u64))
    }
}

/// What `auto_mix` needs besides the model.
#[derive(Clone)]
pub struct AutoMixOptions {
    pub budget: Budget,
    pub measure: Measure,
    /// The types to choose from (None: [`DEFAULT_CANDIDATES`]).
    pub candidates: Option<Vec<GgmlType>>,
    /// Quantize (and, for the proxy, weigh the error) with this importance matrix.
    pub importance: Option<Arc<Importance>>,
    /// Calibration text, needed by `kld` and `gradient`.
    pub text: Option<String>,
    /// Window length for `kld`/`gradient` (default 512).
    pub ctx: usize,
    /// At most this many windows of the text.
    pub chunks: Option<usize>,
}

/// What `auto_mix` chose and why.
#[derive(Debug, Clone)]
pub struct AutoMix {
    pub plan: AutoPlan,
    pub table: DamageTable,
    /// Candidate types left out of some tensor's list because that tensor is stored in them.
    pub left_out: Vec<GgmlType>,
    pub allocation: Allocation,
    /// The budget in bytes for the whole file.
    pub budget_bytes: u64,
    /// `gradient` only: the KL divergence at the starting point (every tensor at its cheapest).
    pub kl_at_cheapest: Option<f64>,
    /// The importance matrix the candidates were measured (and the plan quantizes) with.
    pub importance: Option<Arc<Importance>>,
}

impl AutoMix {
    /// What was chosen, for people: the types left out and why, the size against the budget,
    /// and the tensor kinds × types table.
    pub fn report(&self) -> String {
        let mut lines = Vec::new();
        if !self.left_out.is_empty() {
            let names: Vec<&str> = self.left_out.iter().map(|t| t.name).collect();
            lines.push(format!(
                "auto_mix: left out {} for the tensors stored in the model's own type (re-quantizing to it is lossless against the dequantized reference)",
                names.join(", ")
            ));
        }
        lines.push(format!(
            "auto_mix ({}): {} bytes ({:.2} MB, {:.3} bits/weight) within a budget of {} bytes; score {:.6}",
            self.table.measure.name(),
            self.plan.bytes,
            self.plan.bytes as f64 / 1e6,
            self.plan.bits_per_weight,
            self.budget_bytes,
            self.plan.score()
        ));
        lines.push(self.plan.summary().trim_end().to_string());
        lines.join("\n")
    }
}

/// The types to choose from: `asked`, or the defaults.
pub fn candidate_types(asked: Option<&[GgmlType]>) -> Vec<GgmlType> {
    match asked {
        Some(a) => a.to_vec(),
        None => DEFAULT_CANDIDATES
            .iter()
            .map(|n| GgmlType::from_name(n).expect("a known type"))
            .collect(),
    }
}

/// The types that can hold every value of a block stored as `stored` exactly: the type itself,
/// and the 5-bit type of the same kind, whose grid contains the 4-bit one (a Q5_1 block with half
/// the scale and the same minimum holds each Q4_1 value m + d·k as m + (d/2)·2k; Q5_0 holds each
/// Q4_0 value d·(k − 8) with the same scale). Re-quantizing to any of them can be lossless.
pub fn holding_exactly(stored: &GgmlType) -> Vec<&'static str> {
    match stored.name {
        "Q4_0" => vec!["Q4_0", "Q5_0"],
        "Q4_1" => vec!["Q4_1", "Q5_1"],
        _ => vec![stored.name],
    }
}

/// The type most of `model`'s weights (by count) are stored in — the file's own type, Q4_1 for
/// SmolLM2 — when it is a quantized type.
pub fn main_storage_type(
    tensors: &[super::weights::WeightTensor],
    stored: &std::collections::HashMap<String, GgmlType>,
) -> Option<GgmlType> {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in tensors {
        if let Some(ty) = stored.get(&t.name) {
            match counts.iter_mut().find(|(c, _)| c.name == ty.name) {
                Some(c) => c.1 += t.elements(),
                None => counts.push((*ty, t.elements())),
            }
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(t, _)| t)
}

/// Each tensor's candidates less the types that hold its stored values exactly
/// ([`holding_exactly`]), for the tensors stored in the model's own type ([`main_storage_type`]):
/// re-quantizing them to it is lossless against the dequantized reference, a win no allocator
/// should get. Tensors the source kept at another type (SmolLM2's Q8_0 token embedding) keep
/// every candidate, as llama-quantize's presets keep them: the stock Q4_K_M stores that embedding
/// as Q8_0 too, so both files pay for it alike. Returns the types left out, each once. A tensor
/// left with no candidate is an error naming it.
pub fn leave_out_storage_types(
    model: &Model,
    tensors: &[super::weights::WeightTensor],
    types: &mut [Vec<GgmlType>],
) -> Result<Vec<GgmlType>> {
    let stored = storage_types(model);
    let Some(main) = main_storage_type(tensors, &stored) else {
        return Ok(Vec::new());
    };
    let mut left_out: Vec<GgmlType> = Vec::new();
    for (t, candidates) in tensors.iter().zip(types.iter_mut()) {
        let Some(own) = stored.get(&t.name).filter(|own| own.name == main.name) else {
            continue;
        };
        for lossless in holding_exactly(own) {
            if candidates.iter().any(|c| c.name == lossless) {
                candidates.retain(|c| c.name != lossless);
                if !left_out.iter().any(|l| l.name == lossless) {
                    left_out.push(GgmlType::from_name(lossless).expect("a known type"));
                }
            }
        }
        if candidates.is_empty() {
            return Err(Error::msg(format!(
                "auto_mix: {}'s only candidate is {}, the type it is stored in (re-quantizing to it is lossless, so it is left out); offer other types in candidates",
                t.name, own.name
            )));
        }
    }
    Ok(left_out)
}

/// Choose a type per tensor of `model` as `opts` asks; `progress(stage, done, total)`.
pub fn auto_mix(
    model: &Model,
    opts: &AutoMixOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<AutoMix> {
    let candidates = candidate_types(opts.candidates.as_deref());
    let tensors = weight_tensors(model);
    let mut types = DamageTable::candidates_per_tensor(&tensors, &candidates)?;
    let left_out = leave_out_storage_types(model, &tensors, &mut types)?;
    // A budget no choice can meet is refused now, not after minutes of measuring.
    let sizing = Sizing::new(model, opts)?;
    sizing.check(&tensors, &types)?;
    let importance_map = opts.importance.clone();
    let importance = move |name: &str| -> Option<Vec<f32>> {
        importance_map.as_ref()?.of(name).map(|v| v.to_vec())
    };
    let text = || -> Result<&str> {
        opts.text.as_deref().ok_or_else(|| {
            Error::msg(format!(
                "auto_mix: measure \"{}\" runs the model over calibration text; pass text (a path, a string or a Dataset)",
                opts.measure.name()
            ))
        })
    };
    let mut kl_at_cheapest = None;
    let table = match opts.measure {
        Measure::Proxy => {
            measure_proxy(model, &tensors, &types, &importance, cancel, &mut |d, n| {
                progress("proxy", d, n)
            })?
        }
        Measure::Kld => {
            let reference = dense_reference(model)?;
            let kl = KlReference::new(&reference, text()?, opts.ctx, opts.chunks, cancel)?;
            measure_kld(
                &reference,
                &kl,
                &tensors,
                &types,
                &importance,
                cancel,
                &mut |d, n| progress("kld", d, n),
            )?
        }
        Measure::Gradient => {
            let reference = dense_reference(model)?;
            let windows = Windows::new(&reference, text()?, opts.ctx, opts.chunks)?;
            let (table, kl) = measure_gradient(
                &reference,
                &windows,
                &tensors,
                &types,
                &importance,
                cancel,
                &mut |d, n| progress("gradient", d, n),
            )?;
            kl_at_cheapest = Some(kl);
            table
        }
    };
    solve_sized(sizing, table, left_out, opts, kl_at_cheapest)
}

/// The file the plan will write, as far as its size goes: its layout (with the importance
/// matrix's keys), the budget in bytes, and each tensor's candidates with their exact bytes.
struct Sizing {
    layout: FileLayout,
    base: QuantPlan,
    budget_bytes: u64,
}

impl Sizing {
    fn new(model: &Model, opts: &AutoMixOptions) -> Result<Sizing> {
        // Any preset labels the file the same way as far as its size goes.
        let target = Target::Preset(Preset::named("Q8_0")?);
        let mut layout = FileLayout::new(model, &target)?;
        let mut base = QuantPlan::new(target);
        if let Some(importance) = &opts.importance {
            for (k, v) in importance.keys.iter().flat_map(|k| k.metadata()) {
                layout.set_metadata(k, v);
            }
            base.importance = Some(importance.clone());
        }
        let budget_bytes = match opts.budget {
            Budget::Bytes(b) => b,
            // The whole file (header and padding included) over every weight of the file.
            Budget::BitsPerWeight(bpw) => (bpw * layout.elements() as f64 / 8.0).round() as u64,
        };
        Ok(Sizing {
            layout,
            base,
            budget_bytes,
        })
    }

    /// Refuses a budget that the cheapest candidates cannot meet — before anything is measured.
    fn check(
        &self,
        tensors: &[super::weights::WeightTensor],
        types: &[Vec<GgmlType>],
    ) -> Result<u64> {
        let weight_budget = self.layout.weight_budget(self.budget_bytes)?;
        let mut smallest = 0u64;
        for (t, candidates) in tensors.iter().zip(types) {
            let mut least = u64::MAX;
            for ty in candidates {
                least = least.min(self.layout.tensor_bytes(&t.name, *ty)?);
            }
            smallest += least;
        }
        if smallest > weight_budget {
            let file = smallest + self.layout.fixed_bytes();
            return Err(Error::msg(format!(
                "auto_mix: a budget of {} bytes ({:.2} MB) is below the smallest file these candidates make, {file} bytes ({:.2} MB); raise the budget or offer smaller types",
                self.budget_bytes,
                self.budget_bytes as f64 / 1e6,
                file as f64 / 1e6
            )));
        }
        Ok(weight_budget)
    }
}

/// The solver's part: exact bytes per candidate, the budget less the file's fixed part, the
/// allocation, and the plan.
pub fn solve(
    model: &Model,
    table: DamageTable,
    left_out: Vec<GgmlType>,
    opts: &AutoMixOptions,
    kl_at_cheapest: Option<f64>,
) -> Result<AutoMix> {
    solve_sized(
        Sizing::new(model, opts)?,
        table,
        left_out,
        opts,
        kl_at_cheapest,
    )
}

/// [`solve`] with the file's sizing already worked out.
fn solve_sized(
    sizing: Sizing,
    table: DamageTable,
    left_out: Vec<GgmlType>,
    opts: &AutoMixOptions,
    kl_at_cheapest: Option<f64>,
) -> Result<AutoMix> {
    let weight_budget = sizing.check(&table.tensors, &table.types)?;
    let choosing: Vec<TensorCandidates> = table
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let candidates = table.types[i]
                .iter()
                .zip(&table.damage[i])
                .map(|(ty, d)| {
                    Ok(Candidate {
                        ggml_type: *ty,
                        bytes: sizing.layout.tensor_bytes(&t.name, *ty)?,
                        damage: *d,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(TensorCandidates {
                name: t.name.clone(),
                candidates,
            })
        })
        .collect::<Result<_>>()?;
    let allocation = allocate(&choosing, weight_budget)?;
    let plan =
        AutoPlan::from_allocation(&sizing.layout, &choosing, &allocation)?.with_base(sizing.base);
    Ok(AutoMix {
        plan,
        table,
        left_out,
        allocation,
        budget_bytes: sizing.budget_bytes,
        kl_at_cheapest,
        importance: opts.importance.clone(),
    })
}

/// `earlier`'s measurements solved again for another `budget`: the same damage table, candidates
/// and importance matrix, no new measuring — how a frontier of several budgets costs one
/// measurement. `model` must be the one `earlier` measured.
pub fn solve_again(model: &Model, earlier: &AutoMix, budget: Budget) -> Result<AutoMix> {
    let tensors = weight_tensors(model);
    let same = tensors.len() == earlier.table.tensors.len()
        && tensors
            .iter()
            .zip(&earlier.table.tensors)
            .all(|(a, b)| a.name == b.name && a.rows == b.rows && a.cols == b.cols);
    if !same {
        return Err(Error::msg(
            "auto_mix: the plan to reuse was measured on another model; measure this one (leave out reuse)",
        ));
    }
    let opts = AutoMixOptions {
        budget,
        measure: earlier.table.measure,
        candidates: None,
        importance: earlier.importance.clone(),
        text: None,
        ctx: 0,
        chunks: None,
    };
    solve(
        model,
        earlier.table.clone(),
        earlier.left_out.clone(),
        &opts,
        earlier.kl_at_cheapest,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(
            Budget::parse_size("105MB").unwrap(),
            Budget::Bytes(105_000_000)
        );
        assert_eq!(Budget::parse_size("1.5 KiB").unwrap(), Budget::Bytes(1536));
        assert_eq!(Budget::parse_size("123456").unwrap(), Budget::Bytes(123456));
        for bad in ["", "MB", "12 parsecs", "-5MB", "0"] {
            assert!(Budget::parse_size(bad).is_err(), "{bad}");
        }
    }
}
