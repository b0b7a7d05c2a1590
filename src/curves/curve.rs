//! A named series of (step, value) points, as a run logs them; steps may be unevenly spaced
//! (sparse evaluations), values may include NaN (a diverged step), which the queries skip.

/// A series of (step, value) points.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Curve {
    /// What the values are (`loss`, `eval_loss`, …).
    pub name: String,
    pub steps: Vec<usize>,
    pub values: Vec<f64>,
}

impl Curve {
    /// A curve from (step, value) pairs.
    pub fn new(name: &str, points: &[(usize, f64)]) -> Curve {
        Curve {
            name: name.to_string(),
            steps: points.iter().map(|p| p.0).collect(),
            values: points.iter().map(|p| p.1).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The smallest value and its step.
    pub fn min(&self) -> Option<(usize, f64)> {
        self.steps
            .iter()
            .copied()
            .zip(self.values.iter().copied())
            .filter(|(_, v)| !v.is_nan())
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The step of the smallest value.
    pub fn argmin(&self) -> Option<usize> {
        self.min().map(|(s, _)| s)
    }

    /// The points with `from ≤ step ≤ to`.
    pub fn slice(&self, from: usize, to: usize) -> Curve {
        let points: Vec<(usize, f64)> = self
            .steps
            .iter()
            .copied()
            .zip(self.values.iter().copied())
            .filter(|(s, _)| (from..=to).contains(s))
            .collect();
        Curve::new(&self.name, &points)
    }

    /// The same steps with other values (a smoothed copy).
    pub fn with_values(&self, name: &str, values: Vec<f64>) -> Curve {
        Curve {
            name: name.to_string(),
            steps: self.steps.clone(),
            values,
        }
    }

    /// The last point.
    pub fn last(&self) -> Option<(usize, f64)> {
        Some((*self.steps.last()?, *self.values.last()?))
    }
}

impl Curve {
    /// A one-line text chart of the values: `width` block characters (▁ to █), each the mean of
    /// its share of the points (NaN points skipped); empty when there is nothing finite.
    pub fn sparkline(&self, width: usize) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let finite: Vec<f64> = self
            .values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        if finite.is_empty() || width == 0 {
            return String::new();
        }
        let buckets = width.min(finite.len());
        let means: Vec<f64> = (0..buckets)
            .map(|b| {
                let (lo, hi) = (b * finite.len() / buckets, (b + 1) * finite.len() / buckets);
                finite[lo..hi].iter().sum::<f64>() / (hi - lo) as f64
            })
            .collect();
        let (min, max) = means
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        means
            .iter()
            .map(|&v| {
                let level = if max > min {
                    (v - min) / (max - min)
                } else {
                    0.5
                };
                BARS[((level * 7.0).round() as usize).min(7)]
            })
            .collect()
    }
}

impl std::fmt::Display for Curve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Curve {}: {} points", self.name, self.len())?;
        let first = self.steps.first().zip(self.values.first());
        if let (Some((s0, v0)), Some((s1, v1))) = (first, self.last()) {
            write!(
                f,
                ", steps {s0}–{s1}  {}  first {v0:.4}",
                self.sparkline(40)
            )?;
            if let Some((s, v)) = self.min() {
                write!(f, ", min {v:.4} at step {s}")?;
            }
            write!(f, ", last {v1:.4}")?;
            if v0.is_finite() && v1.is_finite() && *v0 != 0.0 {
                write!(f, " ({:+.1}%)", (v1 - v0) / v0.abs() * 100.0)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_skip_nan_and_slice_by_step() {
        let c = Curve::new("loss", &[(10, 2.0), (20, f64::NAN), (30, 1.5), (40, 1.7)]);
        assert_eq!(c.min(), Some((30, 1.5)));
        assert_eq!(c.argmin(), Some(30));
        assert_eq!(c.last(), Some((40, 1.7)));
        assert_eq!(c.slice(20, 35).steps, vec![20, 30]);
        assert!(Curve::default().min().is_none());
    }

    #[test]
    fn sparkline_and_summary() {
        let c = Curve::new("loss", &[(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]);
        assert_eq!(c.sparkline(4), "█▆▃▁");
        assert_eq!(c.sparkline(2), "█▁");
        assert_eq!(Curve::new("x", &[(1, 2.0), (2, 2.0)]).sparkline(10), "▅▅");
        let text = c.to_string();
        assert!(
            text.contains("█▆▃▁")
                && text.contains("min 1.0000 at step 4")
                && text.contains("(-75.0%)"),
            "{text}"
        );
        assert_eq!(Curve::default().to_string(), "Curve : 0 points");
    }
}
