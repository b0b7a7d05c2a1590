//! Script API, area "quant" (automatic mixed precision): `auto_mix` and the plan it returns
//! (`rules`, `bytes`, `bits_per_weight`, `per_tensor`, `table`, `save`), which `quantize` and
//! `export_gguf` accept. Thin bindings over [`crate::quant::auto_mix`].

use rhai::plugin::*;

use rhai::INT;

use crate::gguf::GgmlType;
use crate::quant::auto_mix::{AutoMix, AutoMixOptions, Budget};
use crate::quant::measure::Measure;
use crate::script::errors::{runtime, ScriptResult};
use crate::script::handle::Handle;
use crate::script::options::Options;

/// The area name `:help` groups these functions under (with the rest of quantization).
pub const AREA: &str = "quant";

/// `auto_mix`'s options that say how to measure: a reused plan brings its own.
const MEASURING_KEYS: &[&str] = &[
    "measure",
    "imatrix",
    "text",
    "ctx",
    "chunks",
    "candidates",
    "template",
];

/// The budget `auto_mix`'s options ask for: `budget` (bytes or a size) or `bpw`.
fn budget_of(o: &Options) -> ScriptResult<Budget> {
    let budget = match (o.value("budget"), o.float("bpw")?) {
        (Some(_), Some(_)) => {
            return Err(runtime(
                "auto_mix options: give budget (bytes or a size) or bpw, not both",
            ))
        }
        (None, Some(bpw)) if bpw > 0.0 => Budget::BitsPerWeight(bpw),
        (None, Some(bpw)) => {
            return Err(runtime(format!(
                "auto_mix options: key \"bpw\": {bpw} bits per weight is not a budget; use a positive number such as 5.0"
            )))
        }
        (Some(b), None) if b.is::<INT>() => {
            let bytes = b.as_int().unwrap_or(0);
            if bytes <= 0 {
                return Err(runtime(format!("auto_mix options: key \"budget\": {bytes} bytes is not a budget")));
            }
            Budget::Bytes(bytes as u64)
        }
        (Some(b), None) if b.is_string() => Budget::parse_size(&b.to_string())
            .map_err(|e| runtime(format!("auto_mix options: key \"budget\": {e}")))?,
        (Some(b), None) => {
            return Err(runtime(format!(
                "auto_mix options: key \"budget\": expected bytes (an integer) or a size such as \"105MB\", got {}",
                b.type_name()
            )))
        }
        (None, None) => {
            return Err(runtime(
                "auto_mix options: needs budget (bytes or a size such as \"105MB\") or bpw (e.g. 5.0)",
            ))
        }
    };
    Ok(budget)
}

/// What `auto_mix` measures with when it measures (no `reuse`).
fn measuring_options(
    o: &Options,
    model: &crate::model::Model,
    budget: Budget,
) -> ScriptResult<AutoMixOptions> {
    let measure = Measure::named(&o.string("measure")?.unwrap_or_else(|| "proxy".into()))
        .map_err(|e| runtime(format!("auto_mix options: key \"measure\": {e}")))?;
    let candidates = match o.array("candidates")? {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let at = format!("auto_mix options: candidates[{i}]");
                    crate::quant::plan::writable_type(&n.to_string(), &at)
                        .map_err(|e| runtime(e.to_string()))
                })
                .collect::<ScriptResult<Vec<GgmlType>>>()?,
        ),
    };
    let text = match o.value("text") {
        Some(t) => {
            let template = o.string("template")?.unwrap_or_else(|| "auto".into());
            Some(crate::script::api_imatrix::text_from(t, model, &template)?.0)
        }
        None => None,
    };
    Ok(AutoMixOptions {
        budget,
        measure,
        candidates,
        importance: crate::script::api_quant::importance_from(o, "auto_mix options")?,
        text,
        ctx: o.int("ctx")?.unwrap_or(512).max(4) as usize,
        chunks: o.int("chunks")?.map(|c| c.max(1) as usize),
    })
}

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(auto_mix_api)
}

#[export_module]
pub mod auto_mix_api {
    use rhai::{Array, Dynamic, Map, NativeCallContext, INT};

    use crate::quant::auto_mix::auto_mix as choose;
    use crate::script::engine::host;
    use crate::script::errors::{runtime, IntoScript, ScriptResult};
    use crate::script::options::Options;

    /// What `auto_mix` chose: `rules`, `bytes`, `bits_per_weight`, `per_tensor`, `measure`,
    /// `score`, `left_out`, `table`, and `save(path)`.
    pub type MixPlan = super::Handle<super::AutoMix>;

    /// Choose a ggml type per tensor of `model` so that the whole GGUF file fits the budget with
    /// the least measured damage. Options: `budget` (bytes, or a size such as "105MB" or
    /// "98MiB") or `bpw` (the file's bits per weight); `measure`: "proxy" (default; no forward
    /// pass: importance-weighted weight error), "kld" (one pass per tensor and type: KL at the
    /// logits with that tensor alone quantized) or "gradient" (one backward pass: KL gradient
    /// times weight error); `imatrix` (an importance matrix or its path: quantizing uses it, and
    /// the proxy weighs errors by it); `text` (calibration text, a file or a Dataset; needed by
    /// kld and gradient); `ctx` (512), `chunks`; `candidates` (type names; default Q3_K Q4_0 Q4_1
    /// Q4_K Q5_0 Q5_1 Q5_K Q6_K Q8_0 F16 — each tensor's own storage type is always left out of
    /// its list, as re-quantizing to it is lossless); `quiet` (false: print the kinds × types
    /// table); `reuse` (an earlier plan of this model: solve its measurements again for this
    /// budget, measuring nothing — its measure, candidates and importance matrix carry over).
    #[rhai_fn(return_raw)]
    pub fn auto_mix(
        ctx: NativeCallContext,
        model: crate::model::Model,
        opts: Map,
    ) -> ScriptResult<MixPlan> {
        let mut keys = vec!["budget", "bpw", "quiet", "reuse"];
        keys.extend_from_slice(super::MEASURING_KEYS);
        let o = Options::new("auto_mix options", opts, &keys)?;
        let budget = super::budget_of(&o)?;
        let mix = match o.value("reuse") {
            Some(earlier) => {
                let earlier = earlier.clone().try_cast::<MixPlan>().ok_or_else(|| {
                    runtime(format!(
                        "auto_mix options: key \"reuse\": expected a plan from auto_mix, got {}",
                        earlier.type_name()
                    ))
                })?;
                for &key in super::MEASURING_KEYS {
                    if o.value(key).is_some() {
                        return Err(runtime(format!(
                            "auto_mix options: key \"{key}\" comes from the reused plan; leave it out, or leave out reuse to measure again"
                        )));
                    }
                }
                crate::quant::auto_mix::solve_again(&model, &earlier, budget).script()?
            }
            None => {
                let opts = super::measuring_options(&o, &model, budget)?;
                let quiet = o.bool("quiet")?.unwrap_or(false);
                let host = host(&ctx);
                // A line at every tenth of the tensors: kld on a real model takes minutes.
                let mut progress = |stage: &str, done: usize, total: usize| {
                    let step = total.div_ceil(10).max(1);
                    if !quiet && (done.is_multiple_of(step) || done == total) {
                        host.output.line(&format!(
                            "auto_mix ({stage}): {done}/{total} tensors measured"
                        ));
                    }
                };
                choose(&model, &opts, &host.cancel, &mut progress).script()?
            }
        };
        if !o.bool("quiet")?.unwrap_or(false) {
            host(&ctx).output.line(&mix.report());
        }
        Ok(super::Handle::new(mix))
    }

    /// The plan's rules, one `PATTERN=TYPE` per tensor (llama-quantize's `--tensor-type`).
    #[rhai_fn(global, get = "rules", pure)]
    pub fn rules(p: &mut MixPlan) -> Array {
        p.plan
            .tensor_type_file()
            .lines()
            .map(|l| Dynamic::from(l.to_string()))
            .collect()
    }

    /// The whole file's size in bytes.
    #[rhai_fn(global, get = "bytes", pure)]
    pub fn bytes(p: &mut MixPlan) -> INT {
        p.plan.bytes as INT
    }

    /// Bits per weight as llama.cpp reports them.
    #[rhai_fn(global, get = "bits_per_weight", pure)]
    pub fn bits_per_weight(p: &mut MixPlan) -> f64 {
        p.plan.bits_per_weight
    }

    /// Sum of the chosen types' damage scores (for "kld": the predicted mean KL divergence).
    #[rhai_fn(global, get = "score", pure)]
    pub fn score(p: &mut MixPlan) -> f64 {
        p.plan.score()
    }

    /// The measure the scores come from.
    #[rhai_fn(global, get = "measure", pure)]
    pub fn measure(p: &mut MixPlan) -> String {
        p.table.measure.name().into()
    }

    /// The candidate types left out of the lists of the tensors stored in them.
    #[rhai_fn(global, get = "left_out", pure)]
    pub fn left_out(p: &mut MixPlan) -> Array {
        p.left_out
            .iter()
            .map(|t| Dynamic::from(t.name.to_string()))
            .collect()
    }

    /// `[#{ name, type, bytes, score }]`, one per tensor in file order.
    #[rhai_fn(global, get = "per_tensor", pure)]
    pub fn per_tensor(p: &mut MixPlan) -> Array {
        p.plan
            .per_tensor
            .iter()
            .map(|c| {
                let mut m = Map::new();
                m.insert("name".into(), c.name.clone().into());
                m.insert("type".into(), c.ggml_type.name.into());
                m.insert("bytes".into(), Dynamic::from(c.bytes as INT));
                m.insert("score".into(), Dynamic::from(c.score));
                Dynamic::from(m)
            })
            .collect()
    }

    /// Every measured score: `[#{ name, scores: #{ TYPE: score } }]`.
    #[rhai_fn(global, get = "scores", pure)]
    pub fn scores(p: &mut MixPlan) -> Array {
        p.table
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut scores = Map::new();
                for (ty, d) in p.table.types[i].iter().zip(&p.table.damage[i]) {
                    scores.insert(ty.name.into(), Dynamic::from(*d));
                }
                let mut m = Map::new();
                m.insert("name".into(), t.name.clone().into());
                m.insert("scores".into(), scores.into());
                Dynamic::from(m)
            })
            .collect()
    }

    /// The tensor kinds × chosen types table.
    #[rhai_fn(global, get = "table", pure)]
    pub fn table(p: &mut MixPlan) -> String {
        p.plan.summary()
    }

    /// Write the plan as a llama-quantize `--tensor-type-file` (replacing `path`); returns it.
    #[rhai_fn(global, name = "save", return_raw, pure)]
    pub fn save(p: &mut MixPlan, path: &str) -> ScriptResult<String> {
        p.plan.save(std::path::Path::new(path)).script()?;
        Ok(path.to_string())
    }

    /// A copy of `model` quantized exactly as the plan says (with its importance matrix).
    #[rhai_fn(name = "quantize", return_raw)]
    pub fn quantize_planned(
        model: crate::model::Model,
        plan: MixPlan,
    ) -> ScriptResult<crate::model::Model> {
        crate::quant::quantize_model::quantize_model(&model, &plan.plan.to_quant_plan()).script()
    }

    /// Write `model` as a GGUF with exactly the plan's types; returns `#{ path, tensors, bytes,
    /// file_type }`. Refuses to replace an existing file.
    #[rhai_fn(name = "export_gguf", return_raw)]
    pub fn export_planned(
        model: crate::model::Model,
        path: &str,
        plan: MixPlan,
    ) -> ScriptResult<Map> {
        export_planned_with(model, path, plan, Map::new())
    }

    /// [`export_planned`] with options: `overwrite` (replace an existing file).
    #[rhai_fn(name = "export_gguf", return_raw)]
    pub fn export_planned_with(
        model: crate::model::Model,
        path: &str,
        plan: MixPlan,
        opts: Map,
    ) -> ScriptResult<Map> {
        let o = Options::new("export_gguf options", opts, &["overwrite"])?;
        let overwrite = o.bool("overwrite")?.unwrap_or(false);
        crate::fsutil::refuse_existing_file(std::path::Path::new(path), overwrite).script()?;
        let r = crate::gguf::export::export_gguf_planned(
            &model,
            None,
            std::path::Path::new(path),
            &plan.plan.to_quant_plan(),
            &mut |_| {},
        )
        .script()?;
        Ok(crate::script::api_quant::export_map(path, &r))
    }

    /// Spearman's rank correlation of two equally long lists of numbers (ties get their mean
    /// rank): 1 when they order things alike, -1 when oppositely — e.g. how well the proxy's
    /// per-tensor scores order the tensors as the measured KL does.
    #[rhai_fn(return_raw)]
    pub fn rank_correlation(a: Array, b: Array) -> ScriptResult<f64> {
        let numbers = |v: &Array, which: &str| -> ScriptResult<Vec<f64>> {
            v.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_float()
                        .or_else(|_| x.as_int().map(|n| n as f64))
                        .map_err(|t| {
                            runtime(format!(
                                "rank_correlation: {which}[{i}] is {t}, not a number"
                            ))
                        })
                })
                .collect()
        };
        let (a, b) = (numbers(&a, "first")?, numbers(&b, "second")?);
        if a.len() != b.len() || a.len() < 2 {
            return Err(runtime(format!(
                "rank_correlation: needs two lists of the same length, at least 2 (got {} and {})",
                a.len(),
                b.len()
            )));
        }
        Ok(crate::quant::measure::rank_correlation(&a, &b))
    }

    /// `MixPlan(measure, tensors, bytes, bits/weight)`.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn to_string(p: &mut MixPlan) -> String {
        format!(
            "MixPlan({}, {} tensors, {} bytes, {:.3} bits/weight)",
            p.table.measure.name(),
            p.plan.per_tensor.len(),
            p.plan.bytes,
            p.plan.bits_per_weight
        )
    }

    /// The same as `to_string`.
    #[rhai_fn(global, name = "to_debug", pure)]
    pub fn to_debug(p: &mut MixPlan) -> String {
        to_string(p)
    }
}
