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

impl std::fmt::Display for Curve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Curve {}: {} points", self.name, self.len())?;
        if let (Some((s0, v0)), Some((s1, v1))) = (
            self.steps
                .first()
                .zip(self.values.first())
                .map(|(a, b)| (*a, *b)),
            self.last(),
        ) {
            write!(f, ", step {s0} {v0:.4} → step {s1} {v1:.4}")?;
        }
        if let Some((s, v)) = self.min() {
            write!(f, ", min {v:.4} at step {s}")?;
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
}
