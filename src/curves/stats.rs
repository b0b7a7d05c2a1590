//! Robust statistics for reading noisy loss curves: medians instead of means, the median absolute
//! deviation (MAD) instead of the standard deviation, a rolling median as the trend (it follows
//! LLaMA-Factory's per-epoch drops as sharp steps instead of smearing them), and an ordinary
//! least-squares slope with its t statistic for "is it still falling".

/// Median of `values` (NaN when empty). Even counts average the two middle values.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Standard deviation estimated robustly: 1.4826 × the median absolute deviation from the median
/// (equal to σ for Gaussian noise, unmoved by a few spikes).
pub fn robust_sigma(values: &[f64]) -> f64 {
    let m = median(values);
    let deviations: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
    1.4826 * median(&deviations)
}

/// Centred rolling median with half-width `half`; near the ends the window shrinks symmetrically,
/// so the first and last points are their own trend (a steep start is not read as a spike).
pub fn rolling_median(values: &[f64], half: usize) -> Vec<f64> {
    let n = values.len();
    (0..n)
        .map(|i| {
            let h = half.min(i).min(n - 1 - i);
            median(&values[i - h..=i + h])
        })
        .collect()
}

/// Least-squares line through (x, y): the slope and its t statistic (slope / standard error;
/// infinite when the points lie exactly on a sloped line, 0 for fewer than 3 points).
pub fn slope_with_t(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len().min(y.len());
    if n < 3 {
        return (0.0, 0.0);
    }
    let (mx, my) = (
        x.iter().sum::<f64>() / n as f64,
        y.iter().sum::<f64>() / n as f64,
    );
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    if sxx == 0.0 {
        return (0.0, 0.0);
    }
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let slope = sxy / sxx;
    let residual: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (b - my - slope * (a - mx)).powi(2))
        .sum();
    let se = (residual / (n - 2) as f64 / sxx).sqrt();
    let t = if se > 0.0 {
        slope / se
    } else if slope == 0.0 {
        0.0
    } else {
        slope.signum() * f64::INFINITY
    };
    (slope, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_sigma_ignore_spikes() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let sigma = robust_sigma(&[1.0, 1.1, 0.9, 1.0, 50.0, 1.05, 0.95]);
        assert!(sigma < 0.2, "{sigma}");
    }

    #[test]
    fn rolling_median_keeps_steps_and_ends() {
        let v = [5.0, 4.0, 4.0, 4.0, 9.0, 4.0, 2.0, 2.0, 2.0, 2.0];
        let r = rolling_median(&v, 2);
        assert_eq!(r[0], 5.0, "an end is its own trend");
        assert_eq!(r[4], 4.0, "a lone spike is removed");
        assert_eq!(&r[6..], &[2.0, 2.0, 2.0, 2.0], "a drop stays sharp");
    }

    #[test]
    fn slope_and_t_statistic() {
        let x = [0.0, 1.0, 2.0, 3.0, 4.0];
        let (s, t) = slope_with_t(&x, &[10.0, 8.0, 6.0, 4.0, 2.0]);
        assert_eq!(s, -2.0);
        assert!(t.is_infinite() && t < 0.0);
        let (s, t) = slope_with_t(&x, &[1.0, 1.2, 0.9, 1.1, 1.0]);
        assert!(s.abs() < 0.05 && t.abs() < 1.0, "{s} {t}");
    }
}
