//! Activation quantization, the lab's "dynamic range" experiment: every linear layer of a model
//! rounds its input to a few bits before the product ([`crate::ggml::act_round`] does the
//! rounding), with the ranges taken from the live tensor (dynamic) or calibrated once on text
//! (static), optionally keeping outlier columns in f32 (LLM.int8) and after moving activation
//! range into the weights (SmoothQuant).
//!
//! - **Calibration** ([`column_ranges`]): the text runs through the model in windows of `ctx`
//!   tokens, and an observer on every projection's input (the hooks the importance matrix uses)
//!   keeps the largest |x_j| of each input column j. Static mode takes each layer's largest value
//!   as its one range; the census and SmoothQuant read the columns.
//! - **SmoothQuant** ([`smooth`]): for the inputs that follow an RMSNorm — q/k/v after the
//!   attention norm, gate/up after the MLP norm — each column j gets
//!   `s_j = max|x_j|^α / max_i |W_ij|^(1−α)` over the weights that read it; the norm's weight is
//!   divided by s (so the input arrives already divided) and each weight's column j multiplied by
//!   it. The product is unchanged in exact arithmetic; the input's range moves into the weights by
//!   the share α. down_proj's input is `silu(gate)·up`, so its factor folds into up_proj's output
//!   rows instead (as AWQ scales the up/down pair); o_proj has no such fold under grouped-query
//!   attention (a value head feeds several query heads) and stays as it is.
//! - **Census** ([`census`]): per layer input, `max_j max|x_j| / median_j max|x_j|` — how far the
//!   largest column stands out, which decides whether one scale per token can serve the row.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};

use super::plan::QuantPlan;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::ggml::act_round::{Granularity, InputRounding, OutlierCount};
use crate::lora::config::Target;
use crate::model::linear::{Linear, Weight};
use crate::model::perplexity::Windows;
use crate::model::{Logits, Model, ModelParts, Pass, Site};

/// Where the ranges come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeMode {
    /// From the live tensor at every product.
    Dynamic,
    /// Calibrated once on text: one range per layer.
    Static,
}

/// What `quantize(…, #{ activations })` asks for.
#[derive(Debug, Clone)]
pub struct ActivationOptions {
    /// 2–8 (8, 6 and 4 are the lab's).
    pub bits: u32,
    pub granularity: Granularity,
    pub mode: RangeMode,
    /// Calibration text: needed by static ranges and SmoothQuant.
    pub calibration: Option<String>,
    /// Calibration windows of this many tokens (512), at most `chunks` of them.
    pub ctx: usize,
    pub chunks: Option<usize>,
    /// Input columns whose largest |x| exceeds this stay f32 (LLM.int8 uses 6).
    pub outlier_threshold: Option<f32>,
    /// SmoothQuant's migration strength α in [0, 1] (0.5 in the paper).
    pub smooth_alpha: Option<f64>,
    /// Layers whose input stays f32: regular expressions on llama.cpp tensor names
    /// (`output.weight`, `blk.0.ffn_down.weight`), as llm-compressor's `ignore` list.
    pub ignore: Vec<regex::Regex>,
}

impl Default for ActivationOptions {
    fn default() -> Self {
        ActivationOptions {
            bits: 8,
            granularity: Granularity::Token,
            mode: RangeMode::Dynamic,
            calibration: None,
            ctx: 512,
            chunks: None,
            outlier_threshold: None,
            smooth_alpha: None,
            ignore: Vec::new(),
        }
    }
}

impl ActivationOptions {
    /// Refuse combinations that mean nothing, naming the key (`what` names the options).
    pub fn check(&self, what: &str) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::msg(format!("{what}: key \"{key}\": {msg}")));
        if !(2..=8).contains(&self.bits) {
            return bad(
                "bits",
                format!("{} is not 2–8 (8, 6 and 4 are the usual)", self.bits),
            );
        }
        if self.mode == RangeMode::Static && self.granularity != Granularity::Tensor {
            return bad(
                "mode",
                format!(
                    "static ranges are one per layer, calibrated in advance: use granularity \"tensor\" with it (\"{}\" groups exist only in the live tensor: use mode \"dynamic\")",
                    self.granularity.name()
                ),
            );
        }
        if self.granularity == Granularity::WeightPartner
            && (self.outlier_threshold.is_some()
                || self.mode == RangeMode::Static
                || self.bits != 8)
        {
            return bad(
                "granularity",
                "\"ggml\" is llama.cpp's own 8-bit dynamic arithmetic: no bits, mode or outlier_threshold with it".into(),
            );
        }
        if let Some(t) = self.outlier_threshold {
            if !(t.is_finite() && t > 0.0) {
                return bad(
                    "outlier_threshold",
                    format!("{t} is not a positive number (LLM.int8 uses 6.0)"),
                );
            }
        }
        if let Some(a) = self.smooth_alpha {
            if !(0.0..=1.0).contains(&a) {
                return bad(
                    "smooth_alpha",
                    format!("{a} is not in 0–1 (SmoothQuant uses 0.5)"),
                );
            }
        }
        let needs_text = match (self.mode, self.smooth_alpha) {
            (RangeMode::Static, _) => Some("mode \"static\""),
            (_, Some(_)) => Some("smooth_alpha"),
            _ => None,
        };
        if let (Some(why), None) = (needs_text, &self.calibration) {
            return bad(
                "calibration",
                format!("{why} calibrates on text: add calibration: \"a text or a file\" (kept apart from the evaluation text)"),
            );
        }
        if self.ctx < 4 {
            return bad(
                "ctx",
                format!("{} tokens is too short a calibration window", self.ctx),
            );
        }
        Ok(())
    }
}

/// Per projection input, the largest |x_j| of each column over some text.
#[derive(Debug, Clone, Default)]
pub struct ColumnRanges {
    pub sites: BTreeMap<Site, Vec<f32>>,
    /// Tokens the text ran through the model.
    pub tokens: usize,
}

impl ColumnRanges {
    /// The largest |x| of a site's input over all its columns.
    pub fn absmax(&self, site: Site) -> Option<f32> {
        self.sites
            .get(&site)
            .map(|c| c.iter().fold(0f32, |a, &v| a.max(v)))
    }
}

/// Run `text` through `model` (windows of `ctx` tokens, at most `chunks`) and keep, at every
/// projection's input, each column's largest |x|.
pub fn column_ranges(
    model: &Model,
    text: &str,
    ctx: usize,
    chunks: Option<usize>,
    cancel: &CancelToken,
) -> Result<ColumnRanges> {
    let windows = Windows::new(model, text, ctx, chunks)?;
    let sites: Mutex<BTreeMap<Site, Vec<f32>>> = Mutex::new(BTreeMap::new());
    let observe = |site: Site, x: &Tensor| -> Result<()> {
        let c = x.dim(candle_core::D::Minus1)?;
        let values: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut col = vec![0f32; c];
        for row in values.chunks(c.max(1)) {
            for (m, v) in col.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let mut sites = sites.lock().unwrap_or_else(|p| p.into_inner());
        match sites.get_mut(&site) {
            Some(acc) => acc.iter_mut().zip(&col).for_each(|(a, v)| *a = a.max(*v)),
            None => {
                sites.insert(site, col);
            }
        }
        Ok(())
    };
    run_windows(model, &windows, Logits::All, &observe, cancel)?;
    Ok(ColumnRanges {
        sites: sites.into_inner().unwrap_or_else(|p| p.into_inner()),
        tokens: windows.count * ctx,
    })
}

/// Every window of `windows` through `model` (inference), `observe` seeing each projection's
/// input: the calibration pass of activation ranges and low-rank statistics alike.
pub fn run_windows(
    model: &Model,
    windows: &Windows,
    which: Logits,
    observe: crate::model::Observer,
    cancel: &CancelToken,
) -> Result<()> {
    let pass = Pass {
        observe: Some(observe),
        ..Default::default()
    };
    for c in 0..windows.count {
        cancel.check()?;
        let ids = windows.ids(c, &model.llama.device)?;
        model.llama.forward_with(&ids, None, None, which, pass)?;
    }
    Ok(())
}

/// One layer input's outlier census.
#[derive(Debug, Clone, PartialEq)]
pub struct InputCensus {
    /// The block, None for the output projection's input.
    pub layer: Option<usize>,
    /// Which input: "attn" (q/k/v), "attn_output" (o), "ffn" (gate/up), "ffn_down", "output".
    pub input: &'static str,
    /// max_j max|x_j| / median_j max|x_j|.
    pub ratio: f64,
    /// max_j max|x_j|.
    pub max: f32,
}

/// The census of every distinct projection input (q/k/v share one, as do gate/up).
pub fn census(ranges: &ColumnRanges) -> Vec<InputCensus> {
    let mut out = Vec::new();
    for (site, cols) in &ranges.sites {
        let (layer, input) = match site {
            Site::Block(i, Target::Q) => (Some(*i), "attn"),
            Site::Block(i, Target::O) => (Some(*i), "attn_output"),
            Site::Block(i, Target::Gate) => (Some(*i), "ffn"),
            Site::Block(i, Target::Down) => (Some(*i), "ffn_down"),
            Site::Output => (None, "output"),
            _ => continue, // k, v, up: the same input as q or gate
        };
        let mut sorted = cols.clone();
        sorted.sort_by(f32::total_cmp);
        let max = sorted.last().copied().unwrap_or(0.0);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        out.push(InputCensus {
            layer,
            input,
            ratio: if median > 0.0 {
                max as f64 / median as f64
            } else {
                f64::INFINITY
            },
            max,
        });
    }
    out
}

/// SmoothQuant: `model` (unquantized) with activation range moved into the weights by `alpha`,
/// from the column ranges of its own inputs ([`column_ranges`] on calibration text).
pub fn smooth(model: &Model, ranges: &ColumnRanges, alpha: f64) -> Result<Model> {
    if model.quantized {
        return Err(Error::msg(
            "quantize: smooth_alpha changes the weights before they are quantized: give the unquantized model (and a type), not a quantized one",
        ));
    }
    let mut llama = model.llama.clone();
    for (i, block) in llama.blocks.iter_mut().enumerate() {
        for (first, group) in [
            (Target::Q, [Target::Q, Target::K, Target::V].as_slice()),
            (Target::Gate, [Target::Gate, Target::Up].as_slice()),
        ] {
            let act = ranges.sites.get(&Site::Block(i, first)).ok_or_else(|| {
                Error::msg(format!("quantize: no calibration ranges for block {i}"))
            })?;
            let weights: Vec<Tensor> = group
                .iter()
                .map(|&t| block.linear(t).dense_weight())
                .collect::<Result<_>>()?;
            // max_i |W_ij| over every weight that reads column j.
            let mut w_max = vec![0f32; act.len()];
            for w in &weights {
                let (_, k) = w.dims2()?;
                let col: Vec<f32> = w.abs()?.max(0)?.to_vec1()?;
                if k != act.len() {
                    return Err(Error::msg(format!(
                        "quantize: block {i}: calibration saw {} input columns, the weight has {k}",
                        act.len()
                    )));
                }
                w_max.iter_mut().zip(&col).for_each(|(m, c)| *m = m.max(*c));
            }
            let s: Vec<f32> = act
                .iter()
                .zip(&w_max)
                .map(|(&a, &w)| smoothing_factor(a, w, alpha))
                .collect();
            let s_t = Tensor::new(s.as_slice(), &llama.device)?; // (C)
            let norm = if first == Target::Q {
                &mut block.attn_norm
            } else {
                &mut block.mlp_norm
            };
            *norm = norm
                .to_dtype(DType::F32)?
                .div(&s_t)?
                .to_dtype(norm.dtype())?;
            for (&t, w) in group.iter().zip(weights) {
                let lin = block.linear_mut(t);
                let scaled = w
                    .broadcast_mul(&s_t.unsqueeze(0)?)?
                    .to_dtype(dense_dtype(lin))?;
                *lin = Linear::dense(scaled, lin.bias.clone());
            }
        }
        // down_proj reads silu(gate)·up: dividing up_proj's output row j by s_j divides
        // down's input column j exactly.
        let act = ranges
            .sites
            .get(&Site::Block(i, Target::Down))
            .ok_or_else(|| Error::msg(format!("quantize: no calibration ranges for block {i}")))?;
        let down = block.down.dense_weight()?; // (C, F)
        let up = block.up.dense_weight()?; // (F, C)
        let w_max: Vec<f32> = down.abs()?.max(0)?.to_vec1()?;
        if w_max.len() != act.len() {
            return Err(Error::msg(format!(
                "quantize: block {i}: calibration saw {} ffn_down input columns, the weight has {}",
                act.len(),
                w_max.len()
            )));
        }
        let s: Vec<f32> = act
            .iter()
            .zip(&w_max)
            .map(|(&a, &w)| smoothing_factor(a, w, alpha))
            .collect();
        let s_t = Tensor::new(s.as_slice(), &llama.device)?; // (F)
        let up_dtype = dense_dtype(&block.up);
        let down_dtype = dense_dtype(&block.down);
        block.up = Linear::dense(
            up.broadcast_div(&s_t.unsqueeze(1)?)?.to_dtype(up_dtype)?,
            block
                .up
                .bias
                .as_ref()
                .map(|b| b.div(&s_t.to_dtype(b.dtype())?))
                .transpose()?,
        );
        block.down = Linear::dense(
            down.broadcast_mul(&s_t.unsqueeze(0)?)?
                .to_dtype(down_dtype)?,
            block.down.bias.clone(),
        );
    }
    Ok(Model::new(ModelParts {
        llama,
        ..(**model).clone()
    }))
}

/// The dtype a layer's dense weight is kept in (f32 for a quantized one).
fn dense_dtype(lin: &Linear) -> DType {
    match &lin.weight {
        Weight::Dense(d) => d.dtype(),
        Weight::Quantized(..) => DType::F32,
    }
}

/// SmoothQuant's per-column factor `max|x_j|^α / max|W_j|^(1−α)`, 1 where either is zero.
pub fn smoothing_factor(act_max: f32, weight_max: f32, alpha: f64) -> f32 {
    if act_max <= 0.0 || weight_max <= 0.0 {
        return 1.0;
    }
    let s = (act_max as f64).max(1e-5).powf(alpha) / (weight_max as f64).powf(1.0 - alpha);
    s.max(1e-5) as f32
}

/// `model` with every linear layer rounding its input as `opts` says; `ranges` gives the static
/// ranges (static mode only). `note` goes into reports' description.
pub fn with_rounding(
    model: &Model,
    opts: &ActivationOptions,
    ranges: Option<&ColumnRanges>,
    note: Option<String>,
) -> Result<Model> {
    if opts.mode == RangeMode::Static {
        let layers = model.llama.blocks.len() * Target::ALL.len() + 1;
        let seen = ranges.map_or(0, |r| r.sites.len());
        if seen < layers {
            return Err(Error::msg(format!(
                "quantize: static activations: {} layers saw no calibration input; give a longer calibration text",
                layers - seen
            )));
        }
    }
    let outliers = Arc::new(OutlierCount::default());
    let rounded = model.with_input_rounding(&|site| {
        let name = super::imatrix::tensor_name(model, site);
        if opts.ignore.iter().any(|r| r.is_match(&name)) {
            return None;
        }
        Some(Arc::new(InputRounding {
            bits: opts.bits,
            granularity: opts.granularity,
            static_absmax: match opts.mode {
                RangeMode::Static => ranges.and_then(|r| r.absmax(site)),
                RangeMode::Dynamic => None,
            },
            outlier_threshold: opts.outlier_threshold,
            outliers: outliers.clone(),
            note: note.clone(),
        }))
    });
    Ok(rounded)
}

/// The whole recipe: SmoothQuant first (when asked, on the unquantized weights), then the weights
/// quantized by `plan` (None: they stay as they are), then every layer's input rounding, with
/// static ranges calibrated on the model as it will run (smoothed, weights quantized).
pub fn quantize_activations(
    model: &Model,
    plan: Option<&QuantPlan>,
    opts: &ActivationOptions,
    cancel: &CancelToken,
) -> Result<Model> {
    opts.check("quantize options: activations")?;
    let text = opts.calibration.as_deref().unwrap_or_default();
    let mut model = model.clone();
    let mut note = None;
    if let Some(alpha) = opts.smooth_alpha {
        let ranges = column_ranges(&model, text, opts.ctx, opts.chunks, cancel)?;
        model = smooth(&model, &ranges, alpha)?;
        note = Some(format!("SmoothQuant α {alpha}"));
    }
    if let Some(plan) = plan {
        model = super::quantize_model::quantize_model(&model, plan)?;
    }
    let ranges = match opts.mode {
        RangeMode::Static => Some(column_ranges(&model, text, opts.ctx, opts.chunks, cancel)?),
        RangeMode::Dynamic => None,
    };
    with_rounding(&model, opts, ranges.as_ref(), note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Model {
        crate::model::load("tiny", &Default::default()).unwrap()
    }

    const TEXT: &str = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. \
        Every good boy deserves fudge. Pack my box with five dozen liquor jugs.";

    #[test]
    fn smoothing_leaves_the_function_unchanged() {
        let model = tiny();
        let cancel = CancelToken::new();
        let ranges = column_ranges(&model, TEXT, 16, None, &cancel).unwrap();
        let smoothed = smooth(&model, &ranges, 0.5).unwrap();
        let ids = Windows::new(&model, TEXT, 16, Some(1))
            .unwrap()
            .ids(0, &model.llama.device)
            .unwrap();
        let a = model.llama.forward(&ids, None, None, Logits::All).unwrap();
        let b = smoothed
            .llama
            .forward(&ids, None, None, Logits::All)
            .unwrap();
        let diff = (a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-3, "{diff}");
        // …while the inputs of q/k/v and gate/up now have flatter column ranges.
        let after = column_ranges(&smoothed, TEXT, 16, None, &cancel).unwrap();
        let spread = |r: &ColumnRanges| {
            census(r)
                .iter()
                .filter(|c| matches!(c.input, "attn" | "ffn" | "ffn_down"))
                .map(|c| c.ratio)
                .sum::<f64>()
        };
        assert!(
            spread(&after) < spread(&ranges),
            "{} vs {}",
            spread(&after),
            spread(&ranges)
        );
    }

    #[test]
    fn smoothing_factors_follow_the_formula() {
        assert_eq!(smoothing_factor(0.0, 1.0, 0.5), 1.0);
        assert!((smoothing_factor(16.0, 4.0, 0.5) - 2.0).abs() < 1e-6);
        assert!((smoothing_factor(16.0, 4.0, 1.0) - 16.0).abs() < 1e-5);
    }

    #[test]
    fn census_counts_each_distinct_input_once() {
        let model = tiny();
        let ranges = column_ranges(&model, TEXT, 16, None, &CancelToken::new()).unwrap();
        let c = census(&ranges);
        assert_eq!(c.len(), model.llama.blocks.len() * 4 + 1);
        assert!(c.iter().all(|c| c.ratio >= 1.0 && c.max > 0.0));
    }

    #[test]
    fn options_that_mean_nothing_are_named() {
        let o = ActivationOptions {
            mode: RangeMode::Static,
            ..Default::default()
        };
        let e = o.check("x").unwrap_err().to_string();
        assert!(e.contains("key \"mode\"") && e.contains("tensor"), "{e}");
        let o = ActivationOptions {
            bits: 9,
            ..Default::default()
        };
        assert!(o
            .check("x")
            .unwrap_err()
            .to_string()
            .contains("key \"bits\""));
        let o = ActivationOptions {
            smooth_alpha: Some(0.5),
            ..Default::default()
        };
        assert!(o
            .check("x")
            .unwrap_err()
            .to_string()
            .contains("key \"calibration\""));
    }

    #[test]
    fn static_ranges_come_from_calibration() {
        let model = tiny();
        let opts = ActivationOptions {
            granularity: Granularity::Tensor,
            mode: RangeMode::Static,
            calibration: Some(TEXT.into()),
            ctx: 16,
            ..Default::default()
        };
        let q = quantize_activations(&model, None, &opts, &CancelToken::new()).unwrap();
        let r = q.llama.blocks[0].q.input_rounding.as_ref().unwrap();
        assert!(r.static_absmax.unwrap() > 0.0);
        assert!(r.describe().contains("static"), "{}", r.describe());
    }
}
