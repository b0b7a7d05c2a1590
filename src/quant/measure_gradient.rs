//! The `gradient` measure: first order, one backward pass (mlx-lm's `dynamic_quant`).
//!
//! Start from the model with every weight at its cheapest candidate — the point the allocator
//! moves away from. The KL divergence of its next-token distributions from the unquantized
//! model's, `L(W)`, is a function of all weights; around that point it is close to linear:
//! `L(W + Δ) ≈ L(W) + Σ g·Δ`, with `g = ∂L/∂W` from one backward pass. Putting tensor `t` at
//! candidate `c` instead moves its weights to `Ŵ_c`, so the predicted KL is, up to a constant
//! per tensor, `g_t · (Ŵ_c − W_ref)` — the gradient times the candidate's weight error. (At the
//! unquantized model itself the gradient of the KL is zero: it is the minimum. That is why the
//! expansion is taken at the quantized end.)
//!
//! It sees the whole network like `kld`, for the price of one pass per calibration window, but
//! it trusts a straight line over a step as large as a quantization error; where the line is
//! wrong the ranking is too. The per-tensor constant is chosen so each tensor's best candidate
//! scores 0 (constants per tensor do not change which combination is best).

use candle_core::{DType, Tensor, Var};

use crate::cancel::CancelToken;
use crate::error::Result;
use crate::gguf::GgmlType;
use crate::model::llama::{log_softmax, Pass};
use crate::model::perplexity::Windows;
use crate::model::Model;

use super::measure::{DamageTable, Measure};
use super::weights::{dense_values, round_trip, with_weight, Site, WeightTensor};

/// ∂KL/∂W for every tensor of `base` (a dense model), the KL divergence being from
/// `reference`'s distributions over `windows`; returns the gradients (f32, row after row) and the
/// mean KL at `base`.
fn kl_gradients(
    reference: &Model,
    base: &Model,
    tensors: &[WeightTensor],
    windows: &Windows,
    cancel: &CancelToken,
) -> Result<(Vec<Vec<f32>>, f64)> {
    // Every weight becomes a variable so the backward pass computes its gradient.
    let mut model = base.clone();
    let mut vars: Vec<Var> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let values = dense_values(base, t.site)?;
        model = with_weight(&model, t.site, values)?;
        let w = match t.site {
            Site::Block(i, target) => match &model.llama.blocks[i].linear(target).weight {
                crate::model::linear::Weight::Dense(w) => w.clone(),
                _ => unreachable!("with_weight stores dense weights"),
            },
            Site::TokenEmbd => model.llama.embed.clone(),
            Site::Output => model.llama.lm_head.dense_weight()?,
        };
        let var = Var::from_tensor(&w)?;
        model = replace_tensor(&model, t.site, var.as_tensor().clone())?;
        vars.push(var);
    }
    let mut grads: Vec<Option<Tensor>> = vec![None; tensors.len()];
    let (mut kl_sum, mut n) = (0f64, 0usize);
    let pass = Pass {
        train: true,
        weight_grads: true,
        ..Default::default()
    };
    for c in 0..windows.count {
        cancel.check()?;
        let (ids, rows) = windows.ids_and_scored_rows(c, &model.llama.device)?;
        let positions: Vec<u32> = (0..windows.ctx as u32).collect();
        let logits = model
            .llama
            .forward_train(&ids, &positions, None, &rows, pass)?; // (n, V)
        let lq = log_softmax(&logits)?;
        let (lr, _) = windows.log_probs(reference, c, None)?;
        let kl = (lr.exp()? * (&lr - &lq)?)?.sum(1)?; // (n)
        let count = kl.dim(0)?;
        let kl_total = kl.sum_all()?;
        kl_sum += kl_total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        n += count;
        let store = kl_total.backward()?;
        for (k, var) in vars.iter().enumerate() {
            if let Some(g) = store.get(var.as_tensor()) {
                // Detached, so the sum does not keep each batch's forward graph alive.
                let g = g.detach();
                grads[k] = Some(match grads[k].take() {
                    Some(sum) => (sum + g)?,
                    None => g,
                });
            }
        }
    }
    let scale = 1.0 / n.max(1) as f64;
    let grads = grads
        .into_iter()
        .zip(tensors)
        .map(|(g, t)| match g {
            Some(g) => Ok((g * scale)?.flatten_all()?.to_vec1::<f32>()?),
            None => Ok(vec![0.0; t.elements()]),
        })
        .collect::<Result<_>>()?;
    Ok((grads, kl_sum * scale))
}

/// `model` with the tensor at `site` replaced by `w` as is (no copy: a variable stays one).
fn replace_tensor(model: &Model, site: Site, w: Tensor) -> Result<Model> {
    use crate::model::linear::Linear;
    let mut llama = model.llama.clone();
    match site {
        Site::Block(i, t) => {
            let lin = llama.blocks[i].linear_mut(t);
            let bias = lin.bias.clone();
            *lin = Linear::dense(w, bias);
        }
        Site::TokenEmbd => {
            if llama.config.tie_word_embeddings {
                llama.lm_head = Linear::dense(w.clone(), None);
            }
            llama.embed = w;
        }
        Site::Output => llama.lm_head = Linear::dense(w, None),
    }
    Ok(Model::new(crate::model::ModelParts {
        llama,
        ..(**model).clone()
    }))
}

/// The gradient damage of every candidate for every tensor of `reference` (a dense model), from
/// the KL gradient at the model quantized to each tensor's cheapest candidate; returns the table
/// and the KL divergence at that starting point.
#[allow(clippy::too_many_arguments)]
pub fn measure_gradient(
    reference: &Model,
    windows: &Windows,
    tensors: &[WeightTensor],
    types: &[Vec<GgmlType>],
    importance: &dyn Fn(&str) -> Option<Vec<f32>>,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(DamageTable, f64)> {
    // Quantize every tensor to its cheapest candidate, keeping every candidate's values.
    let mut rounded: Vec<Vec<Vec<f32>>> = Vec::with_capacity(tensors.len());
    let mut base = reference.clone();
    for (i, t) in tensors.iter().enumerate() {
        cancel.check()?;
        let w = dense_values(reference, t.site)?;
        let imp = importance(&t.name).filter(|v| v.len() == t.cols);
        let per: Vec<Vec<f32>> = types[i]
            .iter()
            .map(|ty| round_trip(&w, t.cols, *ty, imp.as_deref()))
            .collect::<Result<_>>()?;
        let cheapest = cheapest(&types[i], t.elements() as u64);
        base = with_weight(&base, t.site, per[cheapest].clone())?;
        rounded.push(per);
        progress(i + 1, 2 * tensors.len());
    }
    let (grads, kl_base) = kl_gradients(reference, &base, tensors, windows, cancel)?;
    let mut damage = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let w = dense_values(reference, t.site)?;
        let g = &grads[i];
        let raw: Vec<f64> = rounded[i]
            .iter()
            .map(|q| {
                q.iter()
                    .zip(&w)
                    .zip(g)
                    .map(|((q, w), g)| *g as f64 * (*q as f64 - *w as f64))
                    .sum()
            })
            .collect();
        let lowest = raw.iter().copied().fold(f64::INFINITY, f64::min);
        damage.push(raw.iter().map(|r| r - lowest).collect());
        progress(tensors.len() + i + 1, 2 * tensors.len());
    }
    Ok((
        DamageTable {
            measure: Measure::Gradient,
            tensors: tensors.to_vec(),
            types: types.to_vec(),
            damage,
        },
        kl_base,
    ))
}

/// The index of the candidate taking the fewest bytes for `elements` weights.
fn cheapest(types: &[GgmlType], elements: u64) -> usize {
    (0..types.len())
        .min_by_key(|&k| types[k].bytes_for(elements).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::weights::{dense_reference, weight_tensors};

    /// The first-order prediction agrees in sign and rough size with the measured change of the
    /// KL divergence when one tensor moves from its cheapest candidate to the most precise one.
    #[test]
    fn the_gradient_predicts_the_change_of_one_tensor() {
        let model =
            dense_reference(&crate::model::load("tiny", &Default::default()).unwrap()).unwrap();
        let text = "the quick brown fox jumps over the lazy dog. ".repeat(20);
        let cancel = CancelToken::new();
        let windows = Windows::new(&model, &text, 64, Some(2)).unwrap();
        let tensors = weight_tensors(&model);
        let types: Vec<GgmlType> = ["Q4_0", "Q8_0"]
            .iter()
            .map(|n| GgmlType::from_name(n).unwrap())
            .collect();
        let per = DamageTable::candidates_per_tensor(&tensors, &types).unwrap();
        let (table, kl_base) = measure_gradient(
            &model,
            &windows,
            &tensors,
            &per,
            &|_| None,
            &cancel,
            &mut |_, _| {},
        )
        .unwrap();
        assert!(kl_base > 0.0);
        // Most tensors are predicted to gain from Q8_0 over Q4_0 (their Q8_0 damage is strictly
        // the lower: a gradient that did not flow would score both 0).
        let gains = table.damage.iter().filter(|row| row[1] < row[0]).count();
        assert!(
            gains * 10 >= tensors.len() * 8,
            "{gains} of {}",
            tensors.len()
        );
    }
}
