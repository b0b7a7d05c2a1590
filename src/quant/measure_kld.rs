//! The `kld` measure: end to end. For every tensor and candidate type, quantize that tensor alone
//! (the rest stays unquantized), run the calibration text through the model and measure the mean
//! KL divergence of its next-token distributions from the unquantized model's — what
//! llama-perplexity's `--kl-divergence` reports, one tensor at a time (exllamav3's measure).
//!
//! It sees everything the proxy cannot (attention, the non-linearities, how errors travel to the
//! logits) and assumes only that the damages of different tensors add up. It costs one forward
//! pass over the calibration text per tensor and candidate, so keep the text short (`chunks`).

use candle_core::{DType, Tensor};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::model::perplexity::Windows;
use crate::model::Model;

use super::measure::{DamageTable, Measure};
use super::weights::{dense_values, round_trip, with_weight, Site, WeightTensor};

/// The unquantized model's log-probabilities on the calibration windows, and the input of each
/// of its blocks, computed once: a change to block `i`'s weights reruns blocks `i..` only.
pub struct KlReference {
    windows: Windows,
    log_probs: Vec<Tensor>,
    /// Per window, the input of every block.
    block_inputs: Vec<Vec<Tensor>>,
}

impl KlReference {
    /// `reference` (dense) over `text` in windows of `ctx` (at most `chunks`).
    pub fn new(
        reference: &Model,
        text: &str,
        ctx: usize,
        chunks: Option<usize>,
        cancel: &CancelToken,
    ) -> Result<KlReference> {
        let windows = Windows::new(reference, text, ctx, chunks)?;
        let mut log_probs = Vec::with_capacity(windows.count);
        let mut block_inputs = Vec::with_capacity(windows.count);
        for c in 0..windows.count {
            cancel.check()?;
            log_probs.push(windows.log_probs(reference, c, None)?.0);
            block_inputs.push(windows.block_inputs(reference, c)?);
        }
        Ok(KlReference {
            windows,
            log_probs,
            block_inputs,
        })
    }

    /// Mean KL divergence (nats per token) of `model` from the reference.
    pub fn kl(&self, model: &Model, cancel: &CancelToken) -> Result<f64> {
        self.kl_changed_at(model, None, cancel)
    }

    /// [`KlReference::kl`] of a `model` that differs from the reference only from block
    /// `first_changed` on (None: anywhere, such as the token embedding): the blocks before it
    /// are not run again.
    pub fn kl_changed_at(
        &self,
        model: &Model,
        first_changed: Option<usize>,
        cancel: &CancelToken,
    ) -> Result<f64> {
        let (mut sum, mut n) = (0f64, 0usize);
        for (c, lr) in self.log_probs.iter().enumerate() {
            cancel.check()?;
            let lq = match first_changed {
                Some(b) => self
                    .windows
                    .log_probs_from_block(model, b, &self.block_inputs[c][b])?,
                None => self.windows.log_probs(model, c, None)?.0,
            };
            let kl = (lr.exp()? * (lr - &lq)?)?.sum(1)?; // (n)
            n += kl.dim(0)?;
            sum += kl.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok(sum / n.max(1) as f64)
    }

    /// Tokens scored per pass.
    pub fn tokens(&self) -> usize {
        self.windows.count * self.windows.scored_per_window()
    }
}

/// The KL damage of every candidate for every tensor of `reference` (a dense model, see
/// [`super::weights::dense_reference`]); `importance(name)` as for the proxy, so each tensor is
/// quantized as the file will be.
pub fn measure_kld(
    reference: &Model,
    kl: &KlReference,
    tensors: &[WeightTensor],
    types: &[Vec<GgmlType>],
    importance: &dyn Fn(&str) -> Option<Vec<f32>>,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DamageTable> {
    if reference.llama.weights_dtype() != DType::F32 {
        return Err(Error::msg(
            "measure \"kld\": the reference must be the dense f32 model (weights::dense_reference)",
        ));
    }
    let mut damage = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let w = dense_values(reference, t.site)?;
        let imp = importance(&t.name).filter(|v| v.len() == t.cols);
        let mut row = Vec::with_capacity(types[i].len());
        for ty in &types[i] {
            cancel.check()?;
            let q = round_trip(&w, t.cols, *ty, imp.as_deref())?;
            let model = with_weight(reference, t.site, q)?;
            let first_changed = match t.site {
                Site::Block(b, _) => Some(b),
                Site::TokenEmbd | Site::Output => None,
            };
            // Rounding can make a tiny change score a hair below zero; damage is never negative.
            row.push(kl.kl_changed_at(&model, first_changed, cancel)?.max(0.0));
        }
        damage.push(row);
        progress(i + 1, tensors.len());
    }
    Ok(DamageTable {
        measure: Measure::Kld,
        tensors: tensors.to_vec(),
        types: types.to_vec(),
        damage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::weights::{dense_reference, weight_tensors};

    #[test]
    fn an_unchanged_model_has_no_divergence_and_coarser_types_more() {
        let model =
            dense_reference(&crate::model::load("tiny", &Default::default()).unwrap()).unwrap();
        let text = "the quick brown fox jumps over the lazy dog. ".repeat(20);
        let cancel = CancelToken::new();
        let kl = KlReference::new(&model, &text, 64, Some(2), &cancel).unwrap();
        assert!(kl.kl(&model, &cancel).unwrap().abs() < 1e-6);
        let tensors: Vec<_> = weight_tensors(&model).into_iter().take(3).collect();
        let types: Vec<GgmlType> = ["Q4_0", "Q8_0"]
            .iter()
            .map(|n| GgmlType::from_name(n).unwrap())
            .collect();
        let per = DamageTable::candidates_per_tensor(&tensors, &types).unwrap();
        let table = measure_kld(
            &model,
            &kl,
            &tensors,
            &per,
            &|_| None,
            &cancel,
            &mut |_, _| {},
        )
        .unwrap();
        for row in &table.damage {
            assert!(row[0] > row[1], "{row:?}");
        }
        // Starting at the changed block gives what the whole pass gives.
        let last = weight_tensors(&model)
            .into_iter()
            .rfind(|t| matches!(t.site, Site::Block(..)))
            .unwrap();
        let Site::Block(layer, _) = last.site else {
            unreachable!()
        };
        assert!(layer > 0);
        let w = dense_values(&model, last.site).unwrap();
        let q = round_trip(&w, last.cols, types[0], None).unwrap();
        let changed = with_weight(&model, last.site, q).unwrap();
        let whole = kl.kl(&changed, &cancel).unwrap();
        let resumed = kl.kl_changed_at(&changed, Some(layer), &cancel).unwrap();
        assert!(
            whole > 0.0 && (whole - resumed).abs() <= 1e-6 * whole,
            "{whole} vs {resumed}"
        );
    }
}
