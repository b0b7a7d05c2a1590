//! What quantization cost: a quantized model against its unquantized reference, tensor by tensor
//! (how far the stored weights are from the reference's) and as a whole (perplexity of both, and
//! how far apart their next-token distributions are), with the definitions of
//! `llama-perplexity --kl-divergence`:
//!
//! - the text is cut into windows of `ctx` tokens and only the second half of each is scored,
//!   exactly as for perplexity ([`crate::model::perplexity::Windows`]);
//! - KL divergence at a position is Σᵥ p_ref(v)·(log p_ref(v) − log p_model(v)), the reference's
//!   distribution first; the report gives its mean and maximum over all scored positions;
//! - top-1 agreement ("same top p") is the share of positions where both models' most likely
//!   next token is the same.
//!
//! llama.cpp stores the reference's log-probabilities as 16-bit codes and skips p < e⁻¹⁶ in the
//! sum; tunelab keeps them in f32. More important: llama.cpp's CPU kernels round activations to
//! 8-bit blocks before every quantized product, which by itself costs SmolLM2 0.5–1% perplexity
//! (a Q4_1 model re-quantized to the same Q4_1 weights: +0.75% in llama-perplexity, 0 in
//! tunelab). By default tunelab keeps activations f32 and reports the cost of the weights alone;
//! `ggml_activations` computes as llama.cpp does, for figures that compare with its own.
//!
//! Per tensor: the ggml type and its bits per weight, RMSE and largest absolute difference
//! between the dequantized weights and the reference's, and the signal-to-noise ratio
//! 10·log₁₀(Σ w_ref² / Σ (w − w_ref)²) in dB (infinite when they are equal).

use candle_core::{DType, Tensor};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::lora::config::Target;
use crate::model::linear::{Linear, Weight};
use crate::model::perplexity::Windows;
use crate::model::Model;
use crate::quant::activations::{census, column_ranges, InputCensus};

/// One weight tensor of the quantized model against the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorError {
    /// llama.cpp's name (`blk.3.ffn_down.weight`).
    pub name: String,
    pub ggml_type: &'static str,
    pub bits_per_weight: f64,
    pub elements: usize,
    pub rmse: f64,
    pub max_abs: f64,
    pub snr_db: f64,
}

/// How the two models' predictions differ on a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub ppl: f64,
    pub ppl_reference: f64,
    pub kl_mean: f64,
    pub kl_max: f64,
    /// Share of scored positions with the same most likely token, 0–1.
    pub top1: f64,
    pub tokens: usize,
    pub chunks: usize,
    pub ctx: usize,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantReport {
    pub tensors: Vec<TensorError>,
    /// Bytes of all weights as stored (1-D tensors in F32).
    pub weight_bytes: u64,
    /// Bytes of the adapter's factors (F32, as a LoRA GGUF stores them); 0 without one.
    pub adapter_bytes: u64,
    /// (weight bytes + adapter bytes) · 8 per weight of the model: what the whole costs.
    pub bits_per_weight: f64,
    /// Present when a text was given.
    pub agreement: Option<Agreement>,
    /// How the model rounds its layers' inputs, when it does
    /// ([`crate::ggml::act_round::InputRounding::describe`]).
    pub activations: Option<String>,
    /// With an outlier threshold: the share of input columns kept in f32 over the scored text.
    pub outlier_fraction: Option<f64>,
    /// When the model rounds its inputs and a text was given: the reference's activation
    /// outlier census on that text, one entry per distinct layer input.
    pub census: Vec<InputCensus>,
}

/// The ggml type a linear layer's weight is stored in.
fn stored_type(lin: &Linear) -> GgmlType {
    match &lin.weight {
        Weight::Quantized(m, _) => match m.as_ref() {
            candle_core::quantized::QMatMul::QTensor(q) => GgmlType::from_candle(q.dtype()),
            candle_core::quantized::QMatMul::Tensor(_) => float_type(DType::F32),
            candle_core::quantized::QMatMul::TensorF16(_) => float_type(DType::F16),
        },
        Weight::Dense(t) => float_type(t.dtype()),
    }
}

fn float_type(d: DType) -> GgmlType {
    let name = match d {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        _ => "F32",
    };
    GgmlType::from_name(name).expect("a float type")
}

/// `w` against `reference`, both dense.
fn compare(name: &str, ty: GgmlType, w: &Tensor, reference: &Tensor) -> Result<TensorError> {
    if w.dims() != reference.dims() {
        return Err(Error::msg(format!(
            "quant_report: tensor {name} is {:?} in the model and {:?} in the reference; compare a model with the unquantized model it came from",
            w.dims(),
            reference.dims()
        )));
    }
    let flat =
        |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
    let (a, b) = (flat(w)?, flat(reference)?);
    let (mut err2, mut sig2, mut max_abs) = (0f64, 0f64, 0f64);
    for (&x, &r) in a.iter().zip(&b) {
        let d = (x - r) as f64;
        err2 += d * d;
        sig2 += r as f64 * r as f64;
        max_abs = max_abs.max(d.abs());
    }
    let n = a.len().max(1);
    Ok(TensorError {
        name: name.to_string(),
        ggml_type: ty.name,
        bits_per_weight: ty.bits_per_weight(),
        elements: a.len(),
        rmse: (err2 / n as f64).sqrt(),
        max_abs,
        snr_db: if err2 == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (sig2 / err2).log10()
        },
    })
}

/// Every weight tensor of `model` against `reference`'s, in llama.cpp's names and file order.
pub fn tensor_errors(model: &Model, reference: &Model) -> Result<Vec<TensorError>> {
    let (m, r) = (&model.llama, &reference.llama);
    if m.blocks.len() != r.blocks.len() {
        return Err(Error::msg(format!(
            "quant_report: the model has {} layers and the reference {}; compare a model with the unquantized model it came from",
            m.blocks.len(),
            r.blocks.len()
        )));
    }
    let embed_type = match m.embed_type {
        Some(d) => GgmlType::from_candle(d),
        None => float_type(m.embed.dtype()),
    };
    let mut out = vec![compare(
        "token_embd.weight",
        embed_type,
        &m.embed,
        &r.embed,
    )?];
    for (i, (bm, br)) in m.blocks.iter().zip(&r.blocks).enumerate() {
        for t in Target::ALL {
            let (lm, lr) = (bm.linear(t), br.linear(t));
            let name = format!("blk.{i}.{}.weight", t.gguf_part());
            out.push(compare(
                &name,
                stored_type(lm),
                &lm.dense_weight()?,
                &lr.dense_weight()?,
            )?);
        }
    }
    if !m.config.tie_word_embeddings {
        out.push(compare(
            "output.weight",
            stored_type(&m.lm_head),
            &m.lm_head.dense_weight()?,
            &r.lm_head.dense_weight()?,
        )?);
    }
    Ok(out)
}

/// Bytes of `model`'s weights as stored: each 2-D weight in its type, 1-D tensors in F32.
fn weight_bytes(model: &Model, tensors: &[TensorError]) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut elements = 0u64;
    for t in tensors {
        let ty = GgmlType::from_name(t.ggml_type).expect("a known type");
        bytes += ty.bytes_for(t.elements as u64).unwrap_or(0);
        elements += t.elements as u64;
    }
    let l = &model.llama;
    let mut one_d = l.norm.elem_count();
    for b in &l.blocks {
        one_d += b.attn_norm.elem_count() + b.mlp_norm.elem_count();
        for t in Target::ALL {
            one_d += b.linear(t).bias.as_ref().map_or(0, |x| x.elem_count());
        }
    }
    (bytes + 4 * one_d as u64, elements + one_d as u64)
}

/// Perplexity of both models, KL divergence and top-1 agreement on `text`.
pub fn agreement(
    model: &Model,
    reference: &Model,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
    adapter: Option<&crate::lora::Adapter>,
    cancel: &CancelToken,
) -> Result<Agreement> {
    if model.config().vocab_size != reference.config().vocab_size {
        return Err(Error::msg(format!(
            "quant_report: the model's vocabulary has {} tokens and the reference's {}; compare a model with the unquantized model it came from",
            model.config().vocab_size,
            reference.config().vocab_size
        )));
    }
    let windows = Windows::new(reference, text, ctx, max_chunks)?;
    let (mut nll, mut nll_ref) = (0f64, 0f64);
    let (mut kl_sum, mut kl_max) = (0f64, 0f64);
    let (mut same, mut count) = (0usize, 0usize);
    for c in 0..windows.count {
        cancel.check()?;
        let (lq, targets) = windows.log_probs(model, c, adapter)?; // (n, V), (n)
        let (lr, _) = windows.log_probs(reference, c, None)?;
        let picked = |lp: &Tensor| -> Result<f64> {
            let p = lp.gather(&targets.unsqueeze(1)?, 1)?; // (n, 1)
            Ok(p.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
        };
        nll -= picked(&lq)?;
        nll_ref -= picked(&lr)?;
        let kl: Vec<f32> = (lr.exp()? * (&lr - &lq)?)?.sum(1)?.to_vec1()?; // (n)
        for k in kl {
            kl_sum += k as f64;
            kl_max = kl_max.max(k as f64);
        }
        let top_q: Vec<u32> = lq.argmax(1)?.to_vec1()?;
        let top_r: Vec<u32> = lr.argmax(1)?.to_vec1()?;
        same += top_q.iter().zip(&top_r).filter(|(a, b)| a == b).count();
        count += top_q.len();
    }
    let n = count as f64;
    Ok(Agreement {
        ppl: (nll / n).exp(),
        ppl_reference: (nll_ref / n).exp(),
        kl_mean: kl_sum / n,
        kl_max,
        top1: same as f64 / n,
        tokens: count,
        chunks: windows.count,
        ctx,
    })
}

/// Options of [`report`].
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// The text to score; no model-level comparison without one.
    pub text: Option<String>,
    /// Window length (llama-perplexity's `-c`), default 512.
    pub ctx: Option<usize>,
    /// At most this many windows (`--chunks`).
    pub chunks: Option<usize>,
    /// Compute the quantized layers as llama.cpp's CPU kernels do, activations rounded to 8 bits
    /// ([`Model::with_ggml_activations`]), so the figures compare with llama-perplexity's;
    /// otherwise activations stay f32 and the figures show the cost of the weights alone.
    pub ggml_activations: bool,
    /// A low-rank compensation (or any adapter) applied to the model: its factors count in the
    /// size and it runs in the comparison.
    pub adapter: Option<crate::lora::Adapter>,
}

/// `model` (quantized) against `reference`.
pub fn report(
    model: &Model,
    reference: &Model,
    opts: &ReportOptions,
    cancel: &CancelToken,
) -> Result<QuantReport> {
    if let Some(base) = opts
        .adapter
        .as_ref()
        .and_then(|a| a.requantized_base.as_ref())
    {
        if !base.is_same(model) {
            return Err(Error::msg(
                "quant_report: this adapter was fitted by LoftQ to a re-quantized base: report adapter.base with it, not the model it started from",
            ));
        }
    }
    let tensors = tensor_errors(model, reference)?;
    let (bytes, elements) = weight_bytes(model, &tensors);
    let adapter_bytes = opts
        .adapter
        .as_ref()
        .map_or(0, crate::quant::lowrank::adapter_bytes);
    let rounding = model.input_rounding();
    let outliers_before = rounding.as_ref().map(|r| r.outliers.get());
    let (model, reference) = if opts.ggml_activations {
        (
            &model.with_ggml_activations(),
            &reference.with_ggml_activations(),
        )
    } else {
        (model, reference)
    };
    let agreement = match &opts.text {
        Some(text) => Some(agreement(
            model,
            reference,
            text,
            opts.ctx.unwrap_or(512),
            opts.chunks,
            opts.adapter.as_ref(),
            cancel,
        )?),
        None => None,
    };
    let outlier_fraction = match (&rounding, outliers_before) {
        (Some(r), Some((kept0, seen0))) if r.outlier_threshold.is_some() => {
            let (kept, seen) = r.outliers.get();
            (seen > seen0).then(|| (kept - kept0) as f64 / (seen - seen0) as f64)
        }
        _ => None,
    };
    let census = match (&rounding, &opts.text) {
        (Some(_), Some(text)) => census(&column_ranges(
            reference,
            text,
            opts.ctx.unwrap_or(512),
            opts.chunks,
            cancel,
        )?),
        _ => Vec::new(),
    };
    Ok(QuantReport {
        tensors,
        weight_bytes: bytes,
        adapter_bytes,
        bits_per_weight: (bytes + adapter_bytes) as f64 * 8.0 / elements.max(1) as f64,
        agreement,
        activations: rounding.map(|r| r.describe()),
        outlier_fraction,
        census,
    })
}

/// `blk.12.ffn_down.weight` → `ffn_down`; `token_embd.weight` → `token_embd`.
fn kind(name: &str) -> &str {
    let base = name.strip_suffix(".weight").unwrap_or(name);
    match base.strip_prefix("blk.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, k)| k),
        None => base,
    }
}

impl QuantReport {
    /// The report as text: one row per (tensor kind, type) — count, bits/weight, mean RMSE,
    /// largest error, mean SNR — then the model's lines.
    pub fn table(&self) -> String {
        let mut groups: Vec<(String, &str, Vec<&TensorError>)> = Vec::new();
        for t in &self.tensors {
            let k = kind(&t.name).to_string();
            match groups
                .iter_mut()
                .find(|(gk, ty, _)| *gk == k && *ty == t.ggml_type)
            {
                Some(g) => g.2.push(t),
                None => groups.push((k, t.ggml_type, vec![t])),
            }
        }
        // Kinds in the order they first appear, the types of one kind together (a stable sort).
        let kinds: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
        groups.sort_by_key(|g| kinds.iter().position(|k| *k == g.0));
        let mut s = format!(
            "{:<12} {:<5} {:>5} {:>7} {:>10} {:>10} {:>7}\n",
            "tensors", "type", "count", "bits/w", "RMSE", "max |err|", "SNR dB"
        );
        for (k, ty, ts) in &groups {
            let n = ts.len() as f64;
            let rmse = ts.iter().map(|t| t.rmse).sum::<f64>() / n;
            let max = ts.iter().map(|t| t.max_abs).fold(0.0, f64::max);
            let snr = ts.iter().map(|t| t.snr_db).sum::<f64>() / n;
            s += &format!(
                "{k:<12} {ty:<5} {:>5} {:>7.2} {rmse:>10.3e} {max:>10.3e} {snr:>7.1}\n",
                ts.len(),
                ts[0].bits_per_weight
            );
        }
        if self.adapter_bytes > 0 {
            s += &format!(
                "weights: {:.2} MB + adapter {:.2} MB = {:.2} MB, {:.2} bits/weight in all\n",
                self.weight_bytes as f64 / 1e6,
                self.adapter_bytes as f64 / 1e6,
                (self.weight_bytes + self.adapter_bytes) as f64 / 1e6,
                self.bits_per_weight
            );
        } else {
            s += &format!(
                "weights: {:.2} MB, {:.2} bits/weight\n",
                self.weight_bytes as f64 / 1e6,
                self.bits_per_weight
            );
        }
        if let Some(a) = &self.agreement {
            s += &format!(
                "perplexity {:.4} (reference {:.4}, {:+.2}%); KL divergence mean {:.5}, max {:.4}; top-1 agreement {:.2}% over {} tokens ({} windows of {})\n",
                a.ppl,
                a.ppl_reference,
                (a.ppl / a.ppl_reference - 1.0) * 100.0,
                a.kl_mean,
                a.kl_max,
                a.top1 * 100.0,
                a.tokens,
                a.chunks,
                a.ctx
            );
        }
        if let Some(a) = &self.activations {
            s += &format!("activations: {a}");
            if let Some(f) = self.outlier_fraction {
                s += &format!("; outlier columns kept in f32: {:.3}%", f * 100.0);
            }
            s += "\n";
        }
        if !self.census.is_empty() {
            s += &census_table(&self.census);
        }
        s
    }
}

/// The activation outlier census as text: one row per layer, one column per distinct input.
fn census_table(census: &[InputCensus]) -> String {
    const INPUTS: [&str; 4] = ["attn", "attn_output", "ffn", "ffn_down"];
    let mut s = String::from(
        "activation outliers, max|x_j| / median_j max|x_j| per layer input (reference, scored text):\n",
    );
    s += &format!("{:<6}", "layer");
    for i in INPUTS {
        s += &format!(" {i:>11}");
    }
    s += "\n";
    let layers = census
        .iter()
        .filter_map(|c| c.layer)
        .max()
        .map_or(0, |l| l + 1);
    for layer in 0..layers {
        s += &format!("{layer:<6}");
        for i in INPUTS {
            match census
                .iter()
                .find(|c| c.layer == Some(layer) && c.input == i)
            {
                Some(c) => s += &format!(" {:>11.1}", c.ratio),
                None => s += &format!(" {:>11}", "-"),
            }
        }
        s += "\n";
    }
    if let Some(c) = census.iter().find(|c| c.layer.is_none()) {
        s += &format!("output {:>11.1}\n", c.ratio);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_group_tensors_across_layers() {
        assert_eq!(kind("blk.12.ffn_down.weight"), "ffn_down");
        assert_eq!(kind("token_embd.weight"), "token_embd");
        assert_eq!(kind("output.weight"), "output");
    }

    #[test]
    fn errors_of_a_known_difference() {
        let r = Tensor::new(&[[1f32, -2.0], [3.0, 4.0]], &candle_core::Device::Cpu).unwrap();
        let w = Tensor::new(&[[1f32, -2.0], [3.0, 4.5]], &candle_core::Device::Cpu).unwrap();
        let e = compare("x", GgmlType::from_name("Q8_0").unwrap(), &w, &r).unwrap();
        assert!((e.rmse - 0.25).abs() < 1e-12, "{e:?}"); // sqrt(0.25 / 4)
        assert!((e.max_abs - 0.5).abs() < 1e-12);
        assert!((e.snr_db - 10.0 * (30.0f64 / 0.25).log10()).abs() < 1e-9);
        assert!((e.bits_per_weight - 8.5).abs() < 1e-12);
        let same = compare("x", GgmlType::from_name("F32").unwrap(), &r, &r).unwrap();
        assert!(same.snr_db.is_infinite() && same.rmse == 0.0);
    }
}
