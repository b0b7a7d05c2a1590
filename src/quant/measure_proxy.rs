//! The `proxy` measure: no forward pass, only the weights and an importance matrix.
//!
//! A layer computes `y = W x`. Quantizing `W` to `Ŵ` changes its output by `(Ŵ − W) x`, whose
//! expected energy, if the input columns are uncorrelated, is `Σ_ij E[x_j²] (Ŵ_ij − W_ij)²` —
//! the squared error of every weight, weighted by the mean square of the activation it meets. An
//! importance matrix holds exactly those `E[x_j²]`. Divided by the output's own energy
//! `Σ_ij E[x_j²] W_ij²` it becomes a noise-to-signal ratio that compares across layers of
//! different sizes (llama.cpp PR #15550's measure). Without an importance matrix (or for the
//! token embedding, which is looked up, not multiplied) every column counts the same. A tied
//! token embedding is used twice — looked up at the input and multiplied at the output — so its
//! error counts twice, as two layers' errors would.

use rayon::prelude::*;

use crate::cancel::CancelToken;
use crate::error::Result;
use crate::gguf::GgmlType;
use crate::model::Model;

use super::measure::{DamageTable, Measure};
use super::weights::{dense_values, round_trip, Site, WeightTensor};

/// The importance-weighted relative error of `quantized` against `original` (rows of
/// `importance.len()` columns; `None`: every column weighs 1).
pub fn weighted_relative_error(
    original: &[f32],
    quantized: &[f32],
    importance: Option<&[f32]>,
    cols: usize,
) -> f64 {
    let (num, den) = original
        .par_chunks(cols)
        .zip(quantized.par_chunks(cols))
        .map(|(w, q)| {
            let (mut num, mut den) = (0f64, 0f64);
            for j in 0..cols {
                let imp = importance.map_or(1.0, |v| v[j] as f64);
                let (w, q) = (w[j] as f64, q[j] as f64);
                num += imp * (q - w) * (q - w);
                den += imp * w * w;
            }
            (num, den)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    if den > 0.0 {
        num / den
    } else {
        num
    }
}

/// The proxy damage of every candidate for every tensor. `importance(name)` gives a tensor's
/// per-column importance (quantizing with it, as the file will be); `progress(done, total)`
/// after each tensor.
pub fn measure_proxy(
    model: &Model,
    tensors: &[WeightTensor],
    types: &[Vec<GgmlType>],
    importance: &dyn Fn(&str) -> Option<Vec<f32>>,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DamageTable> {
    let mut damage = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        cancel.check()?;
        let w = dense_values(model, t.site)?;
        let imp = importance(&t.name).filter(|v| v.len() == t.cols);
        let uses = if t.site == Site::TokenEmbd && model.config().tie_word_embeddings {
            2.0
        } else {
            1.0
        };
        let row: Vec<f64> = types[i]
            .iter()
            .map(|ty| {
                let q = round_trip(&w, t.cols, *ty, imp.as_deref())?;
                Ok(uses * weighted_relative_error(&w, &q, imp.as_deref(), t.cols))
            })
            .collect::<Result<_>>()?;
        damage.push(row);
        progress(i + 1, tensors.len());
    }
    Ok(DamageTable {
        measure: Measure::Proxy,
        tensors: tensors.to_vec(),
        types: types.to_vec(),
        damage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_counts_each_column_by_its_importance() {
        // Two columns: the error sits in column 1 only.
        let w = [1.0, 1.0, 1.0, 1.0];
        let q = [1.0, 1.5, 1.0, 1.5];
        let flat = weighted_relative_error(&w, &q, None, 2);
        assert!((flat - 0.5 / 4.0).abs() < 1e-12, "{flat}");
        let quiet = weighted_relative_error(&w, &q, Some(&[1.0, 0.0]), 2);
        assert_eq!(quiet, 0.0);
        let loud = weighted_relative_error(&w, &q, Some(&[0.0, 1.0]), 2);
        assert!((loud - 0.25).abs() < 1e-12, "{loud}");
    }

    #[test]
    fn more_bits_do_less_damage_on_the_tiny_model() {
        let model = crate::model::load("tiny", &Default::default()).unwrap();
        let tensors = super::super::weights::weight_tensors(&model);
        let names = ["Q4_0", "Q5_0", "Q8_0"];
        let types: Vec<GgmlType> = names
            .iter()
            .map(|n| GgmlType::from_name(n).unwrap())
            .collect();
        let per = DamageTable::candidates_per_tensor(&tensors, &types).unwrap();
        let table = measure_proxy(
            &model,
            &tensors,
            &per,
            &|_| None,
            &CancelToken::new(),
            &mut |_, _| {},
        )
        .unwrap();
        for (t, row) in table.damage.iter().enumerate() {
            assert!(
                row[0] > row[1] && row[1] > row[2],
                "{}: {row:?}",
                tensors[t].name
            );
            assert!(row[2] > 0.0 && row[0] < 0.1, "{}: {row:?}", tensors[t].name);
        }
    }
}
