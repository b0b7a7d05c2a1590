//! Loss curves: a named series of (step, value) points, as a run logs them.
//! (Smoothing, plots and diagnosis come with the curves issue.)

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
