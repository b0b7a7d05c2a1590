//! The training objective: cross-entropy of the next token at every labelled position (the sum;
//! callers divide by the number of label tokens in the optimizer step, as transformers does
//! since it normalizes by the tokens of the whole accumulated step), and the token accuracy.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// Summed negative log-likelihood of `targets` (N,) under `logits` (N, V), as a differentiable
/// scalar, and how many argmax predictions were right.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, usize)> {
    let loss = crate::model::fused::cross_entropy(logits, targets)?.sum_all()?; // (N,) → ()
    let predicted = logits.detach().argmax(D::Minus1)?; // (N,)
    let correct = predicted
        .eq(&targets.to_dtype(predicted.dtype())?)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize;
    Ok((loss, correct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_cross_entropy_times_n() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.1, -1.0, 3.0]], &dev).unwrap();
        let targets = Tensor::new(&[1u32, 0], &dev).unwrap();
        let (sum, correct) = cross_entropy_sum(&logits, &targets).unwrap();
        let mean = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
        let a = sum.to_scalar::<f32>().unwrap();
        let b = mean.to_scalar::<f32>().unwrap() * 2.0;
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        assert_eq!(correct, 1);
    }
}
