//! Smoothing a noisy loss series.
//!
//! - [`llamafactory`]: LLaMA-Factory's `smooth()` (extras/ploting.py, specs/llamafactory.md §5):
//!   one weight for the whole series, `w = 1.8·(sigmoid(0.05·N) − 0.5)`, `s₀ = x₀`,
//!   `sₜ = w·sₜ₋₁ + (1 − w)·xₜ`, so short series are barely smoothed and long ones at w → 0.9.
//! - [`ema`]: TensorBoard's debiased exponential moving average with a chosen weight: the running
//!   average starts at 0 and is divided by `1 − wᵗ`, so early points are not pulled toward zero.
//!   Non-finite values are skipped (the previous smoothed value is repeated).

/// LLaMA-Factory's smoothing weight for a series of `n` points.
pub fn llamafactory_weight(n: usize) -> f64 {
    1.8 * (1.0 / (1.0 + (-0.05 * n as f64).exp()) - 0.5)
}

/// LLaMA-Factory's `smooth(scalars)`, exactly.
pub fn llamafactory(values: &[f64]) -> Vec<f64> {
    let Some(&first) = values.first() else {
        return Vec::new();
    };
    let w = llamafactory_weight(values.len());
    let mut last = first;
    values
        .iter()
        .map(|&v| {
            last = last * w + (1.0 - w) * v;
            last
        })
        .collect()
}

/// TensorBoard's debiased EMA with `weight` in [0, 1).
pub fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let mut last = 0.0;
    let mut count = 0;
    let mut out = Vec::with_capacity(values.len());
    for &v in values {
        if !v.is_finite() {
            out.push(out.last().copied().unwrap_or(v));
            continue;
        }
        last = last * weight + (1.0 - weight) * v;
        count += 1;
        let debias = if weight == 0.0 {
            1.0
        } else {
            1.0 - weight.powi(count)
        };
        out.push(last / debias);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llamafactory_weights_match_the_spec_table() {
        for (n, w) in [
            (1, 0.0225),
            (10, 0.2204),
            (20, 0.4159),
            (50, 0.7635),
            (100, 0.8880),
        ] {
            assert!((llamafactory_weight(n) - w).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn llamafactory_smooth_matches_its_python() {
        // smooth([1, 2, 3]) in Python: w = 1.8*(1/(1+exp(-0.15))-0.5) = 0.0673...
        let w = llamafactory_weight(3);
        let s = llamafactory(&[1.0, 2.0, 3.0]);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - (w + (1.0 - w) * 2.0)).abs() < 1e-12);
        assert!((s[2] - (s[1] * w + (1.0 - w) * 3.0)).abs() < 1e-12);
        assert!(llamafactory(&[]).is_empty());
    }

    #[test]
    fn ema_is_debiased_and_skips_nan() {
        let s = ema(&[2.0, 2.0, f64::NAN, 2.0], 0.9);
        for v in s {
            assert!(
                (v - 2.0).abs() < 1e-12,
                "a constant series stays constant: {v}"
            );
        }
        assert_eq!(ema(&[1.0, 3.0], 0.0), vec![1.0, 3.0]);
    }
}
