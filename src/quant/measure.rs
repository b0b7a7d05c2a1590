//! How much damage each candidate type would do to each weight: the table the budget solver
//! ([`super::allocate`]) chooses from. Three ways to measure it, because which one ranks the
//! tensors best is exactly the question a quantization lab answers:
//!
//! | measure | cost | assumes |
//! |---|---|---|
//! | `proxy` ([`super::measure_proxy`]) | no forward pass | a weight's damage is its importance-weighted relative error (llama.cpp PR #15550): each input column's error counts by how much signal flows through it, and errors of different layers add up |
//! | `kld` ([`super::measure_kld`]) | one forward pass per tensor and candidate | damage is what the logits lose when this tensor alone is quantized (exllamav3), and these losses add up |
//! | `gradient` ([`super::measure_gradient`]) | one forward and backward pass | the change in KL divergence is linear around a model quantized to the cheapest candidates (mlx-lm's `dynamic_quant`): gradient · weight change |

use crate::error::{Error, Result};
use crate::gguf::GgmlType;

use super::weights::WeightTensor;

/// Which way to measure damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Proxy,
    Kld,
    Gradient,
}

impl Measure {
    /// The measure called `name` (`proxy`, `kld`, `gradient`).
    pub fn named(name: &str) -> Result<Measure> {
        match name {
            "proxy" => Ok(Measure::Proxy),
            "kld" => Ok(Measure::Kld),
            "gradient" => Ok(Measure::Gradient),
            _ => Err(Error::msg(format!(
                "measure \"{name}\" is not one tunelab has; use \"proxy\" (no forward pass), \"kld\" (one pass per tensor and type) or \"gradient\" (one backward pass)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Measure::Proxy => "proxy",
            Measure::Kld => "kld",
            Measure::Gradient => "gradient",
        }
    }
}

/// The candidates offered when the caller names none: every type tunelab quantizes to between
/// 3 and 16 bits. Rows that a type cannot hold are left out per tensor ([`fits`]).
pub const DEFAULT_CANDIDATES: &[&str] = &[
    "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "F16",
];

/// Whether rows of `cols` weights can be stored as `ty` (whole blocks only: 256 for K-quants,
/// 32 for the others).
pub fn fits(ty: &GgmlType, cols: usize) -> bool {
    ty.block > 0 && (cols as u64).is_multiple_of(ty.block)
}

/// Damage per tensor and candidate: `damage[t][k]` for tensor `tensors[t]` quantized to
/// `types[t][k]`. Lower is better; only differences within one tensor's row and sums across
/// tensors mean anything.
#[derive(Debug, Clone)]
pub struct DamageTable {
    pub measure: Measure,
    pub tensors: Vec<WeightTensor>,
    pub types: Vec<Vec<GgmlType>>,
    pub damage: Vec<Vec<f64>>,
}

impl DamageTable {
    /// The candidates of each tensor: those of `candidates` that fit its rows. A tensor that no
    /// candidate fits is an error naming it.
    pub fn candidates_per_tensor(
        tensors: &[WeightTensor],
        candidates: &[GgmlType],
    ) -> Result<Vec<Vec<GgmlType>>> {
        tensors
            .iter()
            .map(|t| {
                let fitting: Vec<GgmlType> = candidates
                    .iter()
                    .filter(|c| fits(c, t.cols))
                    .copied()
                    .collect();
                if fitting.is_empty() {
                    let names: Vec<&str> = candidates.iter().map(|c| c.name).collect();
                    return Err(Error::msg(format!(
                        "auto_mix: no candidate type can hold {}'s rows of {} weights (candidates: {}); add a 32-weight type such as Q8_0",
                        t.name,
                        t.cols,
                        names.join(", ")
                    )));
                }
                Ok(fitting)
            })
            .collect()
    }

    /// The damage of `tensor` at type `name`, when that type was a candidate.
    pub fn damage_of(&self, tensor: usize, name: &str) -> Option<f64> {
        let k = self.types[tensor].iter().position(|t| t.name == name)?;
        Some(self.damage[tensor][k])
    }
}

/// Spearman's rank correlation of two equally long lists (ties get their mean rank): how well
/// one measure orders the tensors as another does.
pub fn rank_correlation(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(x: &[f64]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0.0; x.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
                j += 1;
            }
            let mean = (i + j) as f64 / 2.0;
            for &o in &order[i..=j] {
                r[o] = mean;
            }
            i = j + 1;
        }
        r
    }
    let n = a.len().min(b.len());
    if n < 2 {
        return f64::NAN;
    }
    let (ra, rb) = (ranks(&a[..n]), ranks(&b[..n]));
    let mean = (n as f64 - 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (ra[i] - mean, rb[i] - mean);
        cov += x * y;
        va += x * x;
        vb += y * y;
    }
    cov / (va * vb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_correlation_of_orders() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((rank_correlation(&a, &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((rank_correlation(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Monotone but not linear: still a perfect rank agreement.
        assert!((rank_correlation(&a, &[1.0, 8.0, 27.0, 1000.0]) - 1.0).abs() < 1e-12);
        let r = rank_correlation(&a, &[2.0, 1.0, 4.0, 3.0]);
        assert!((r - 0.6).abs() < 1e-12, "{r}");
    }

    #[test]
    fn candidates_respect_row_width() {
        let tensor = |cols| WeightTensor {
            name: "blk.0.attn_q.weight".into(),
            site: super::super::weights::Site::TokenEmbd,
            rows: 4,
            cols,
        };
        let types: Vec<GgmlType> = ["Q4_K", "Q5_0", "Q8_0"]
            .iter()
            .map(|n| GgmlType::from_name(n).unwrap())
            .collect();
        let per = DamageTable::candidates_per_tensor(&[tensor(576), tensor(512)], &types).unwrap();
        let names = |v: &Vec<GgmlType>| v.iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names(&per[0]), ["Q5_0", "Q8_0"]);
        assert_eq!(names(&per[1]), ["Q4_K", "Q5_0", "Q8_0"]);
        let e = DamageTable::candidates_per_tensor(&[tensor(576)], &types[..1]).unwrap_err();
        assert!(e.to_string().contains("blk.0.attn_q.weight"), "{e}");
        assert!(Measure::named("hessian").is_err());
    }
}
