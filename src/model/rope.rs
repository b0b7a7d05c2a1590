//! Rotary position embeddings (RoPE) in the Hugging Face layout: each head's first half and second
//! half of channels form the rotated pairs ("rotate half"). Frequencies `1/θ^(2i/d)`, optionally
//! rescaled the Llama-3 way (low frequencies divided by `factor`, a smooth blend in between).

use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use crate::error::Result;

/// The inverse frequencies of one head, length head_dim/2.
pub fn inverse_frequencies(config: &LlamaConfig) -> Vec<f32> {
    let d = config.head_dim;
    let mut freqs: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    if let Some(s) = &config.rope_scaling {
        let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
        let high_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
        for f in &mut freqs {
            let wavelen = 2.0 * std::f64::consts::PI / *f;
            if wavelen < high_wavelen {
                continue;
            } else if wavelen > low_wavelen {
                *f /= s.factor;
            } else {
                let smooth = (s.original_max_position_embeddings as f64 / wavelen
                    - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
            }
        }
    }
    freqs.into_iter().map(|f| f as f32).collect()
}

/// cos and sin tables for positions `start..start+len`: each (len, head_dim/2).
pub fn tables(
    inv_freq: &[f32],
    start: usize,
    len: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut angles = Vec::with_capacity(len * half);
    for p in start..start + len {
        for f in inv_freq {
            angles.push(p as f32 * f);
        }
    }
    let angles = Tensor::from_vec(angles, (len, half), device)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}

/// cos and sin tables for arbitrary `positions` (e.g. restarting per packed example): each
/// (positions.len(), head_dim/2).
pub fn tables_at(
    inv_freq: &[f32],
    positions: &[u32],
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let angles: Vec<f32> = positions
        .iter()
        .flat_map(|&p| inv_freq.iter().map(move |f| p as f32 * f))
        .collect();
    let angles = Tensor::from_vec(angles, (positions.len(), half), device)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}

/// Rotate-half written with plain ops, so it has a backward pass: `x` (B, H, T, D) by tables
/// that broadcast to (B, H, T, D/2), e.g. (B, 1, T, D/2) or (T, D/2).
pub fn apply_differentiable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(3)?;
    let x1 = x.narrow(3, 0, d / 2)?;
    let x2 = x.narrow(3, d / 2, d / 2)?;
    let first = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let second = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[&first, &second], 3)?)
}

/// Rotate `x` (B, H, T, D) by the tables (T, D/2).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;

    /// The reference: rotate-half written out with plain ops.
    fn reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let d = x.dim(3).unwrap();
        let x1 = x.narrow(3, 0, d / 2).unwrap();
        let x2 = x.narrow(3, d / 2, d / 2).unwrap();
        let cos = Tensor::cat(&[cos, cos], 1).unwrap();
        let sin = Tensor::cat(&[sin, sin], 1).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
        (x.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap()
    }

    #[test]
    fn fast_rope_matches_rotate_half_reference() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let inv: Vec<f32> = (0..4)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / 8.0))
            .collect();
        let (cos, sin) = tables(&inv, 7, 5, DType::F32, &dev).unwrap();
        let diff = max_abs_diff(&apply(&x, &cos, &sin).unwrap(), &reference(&x, &cos, &sin));
        assert!(diff < 1e-5, "max diff {diff}");
        let diff2 = max_abs_diff(
            &apply_differentiable(&x, &cos, &sin).unwrap(),
            &reference(&x, &cos, &sin),
        );
        assert!(diff2 < 1e-5, "differentiable: max diff {diff2}");
        let positions: Vec<u32> = (7..12).collect();
        let (c2, s2) = tables_at(&inv, &positions, DType::F32, &dev).unwrap();
        let same = max_abs_diff(&c2, &cos) + max_abs_diff(&s2, &sin);
        assert!(same < 1e-6);
    }
}
