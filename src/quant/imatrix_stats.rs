//! What an importance matrix says about each tensor, as `llama-imatrix --show-statistics`
//! computes it (`compute_statistics` and `compute_cossim` in `tools/imatrix/imatrix.cpp`).
//!
//! Per tensor, the "activations" are the per-column means of the squared inputs,
//! `a_j = in_sum2_j / count` (matrices that saw no tokens left out). From them:
//!
//! - `energy` = Σ_j a_j, llama.cpp's Σ(Act²): the expected squared norm of the input vector;
//! - `min`, `max`, `mean` = energy / N, `std` = √(max(0, Σ a_j² / N − mean²)) (population);
//! - `active`: the share of columns with |a_j| > 1e-5;
//! - `entropy` = −Σ p_j log2 p_j with p_j = a_j / energy, and `entropy_norm` = 100 × entropy /
//!   log2 N (percent: 100 when every column matters equally);
//! - `zd`: the share of columns more than one standard deviation above the mean;
//! - `cossim`: cosine similarity of the raw sums with the same tensor one block earlier (0 for
//!   block 0 and for tensors outside blocks);
//! - `max_share` (tunelab's, not llama.cpp's) = max / energy, the largest column's share.
//!
//! Sums run left to right in f32, as llama.cpp's `std::accumulate` does, so figures agree to the
//! last printed digit. A legacy file is read as llama-imatrix reads it (values and counts × 512).

use crate::gguf::imatrix_file::ImatrixData;

/// One row of `--show-statistics`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorStats {
    /// The full name (`blk.3.ffn_down.weight`).
    pub tensor: String,
    /// The block number, when the name has one.
    pub layer: Option<usize>,
    /// The part before `.weight` (`ffn_down`), as llama.cpp's table prints it.
    pub short_name: String,
    pub energy: f32,
    pub min: f32,
    pub max: f32,
    pub mean: f32,
    pub std: f32,
    /// Fraction (0..1) of columns above 1e-5.
    pub active: f32,
    /// Columns counted (N).
    pub elements: usize,
    pub entropy: f32,
    /// Percent.
    pub entropy_norm: f32,
    /// Fraction (0..1).
    pub zd: f32,
    pub cossim: f32,
    pub max_share: f32,
}

/// llama.cpp's `process_tensor_name`: the block number and the part before `weight`.
fn split_name(tensor: &str) -> (Option<usize>, String) {
    let parts: Vec<&str> = tensor.split('.').collect();
    let layer = parts
        .windows(2)
        .find(|w| w[0] == "blk")
        .and_then(|w| w[1].parse().ok());
    let short = parts
        .windows(2)
        .find(|w| w[1] == "weight")
        .map_or(tensor, |w| w[0]);
    (layer, short.to_string())
}

/// Left-to-right f32 sums, as `std::accumulate` and `std::inner_product` run.
fn sum(values: impl Iterator<Item = f32>) -> f32 {
    values.fold(0f32, |acc, v| acc + v)
}

/// The statistics of one entry; None when it has no activations (every count zero).
fn tensor_stats(tensor: &str, values: &[f32], counts: &[i64]) -> Option<TensorStats> {
    if counts.is_empty() || !values.len().is_multiple_of(counts.len()) {
        return None;
    }
    let row = values.len() / counts.len();
    let mut act = Vec::with_capacity(values.len());
    for (i, &c) in counts.iter().enumerate() {
        if c != 0 {
            act.extend(values[i * row..(i + 1) * row].iter().map(|&v| v / c as f32));
        }
    }
    if act.is_empty() {
        return None;
    }
    let n = act.len() as f32;
    let total = sum(act.iter().copied());
    let max = act.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = act.iter().copied().fold(f32::INFINITY, f32::min);
    let mean = total / n;
    let var = sum(act.iter().map(|a| a * a)) / n - mean * mean;
    let std = var.max(0.0).sqrt();
    let inactive = act.iter().filter(|a| a.abs() <= 1e-5).count();
    let entropy = if total > 0.0 {
        -sum(act
            .iter()
            .map(|a| a / total)
            .filter(|&p| p > 0.0)
            .map(|p| p * p.log2()))
    } else {
        0.0
    };
    let above = if std > 0.0 {
        act.iter().filter(|&&a| (a - mean) / std > 1.0).count()
    } else {
        0
    };
    let (layer, short_name) = split_name(tensor);
    Some(TensorStats {
        tensor: tensor.to_string(),
        layer,
        short_name,
        energy: total,
        min,
        max,
        mean,
        std,
        active: 1.0 - inactive as f32 / n,
        elements: act.len(),
        entropy,
        entropy_norm: 100.0 * entropy / n.log2(),
        zd: above as f32 / n,
        cossim: 0.0,
        max_share: max / total,
    })
}

/// Cosine similarity of two sums vectors (0 when their lengths differ).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot = sum(a.iter().zip(b).map(|(x, y)| x * y));
    let na = sum(a.iter().map(|x| x * x)).sqrt();
    let nb = sum(b.iter().map(|x| x * x)).sqrt();
    dot / (na * nb)
}

/// Every tensor's statistics, in llama.cpp's order: by short name, then largest energy first.
pub fn imatrix_stats(data: &ImatrixData) -> Vec<TensorStats> {
    let raw_data = data.to_raw();
    let mut rows: Vec<TensorStats> = Vec::new();
    for (name, e) in &raw_data.entries {
        let counts: Vec<i64> = e.counts.iter().map(|&c| c.round() as i64).collect();
        let Some(mut row) = tensor_stats(name, &e.in_sum2, &counts) else {
            continue;
        };
        if let Some(layer) = row.layer.filter(|&l| l > 0) {
            let prev = name.replacen(&format!("blk.{layer}."), &format!("blk.{}.", layer - 1), 1);
            if let Some(p) = raw_data.entries.get(&prev) {
                row.cossim = cosine(&e.in_sum2, &p.in_sum2);
            }
        }
        rows.push(row);
    }
    rows.sort_by(|a, b| {
        a.short_name
            .cmp(&b.short_name)
            .then(b.energy.total_cmp(&a.energy))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::imatrix_file::{ImatrixEntry, ImatrixFormat};

    #[test]
    fn figures_follow_their_definitions() {
        let mut data = ImatrixData {
            format: ImatrixFormat::Gguf,
            ..Default::default()
        };
        // Means of x²: 1, 3, 0, 4 (count 2); the previous block's sums are parallel.
        data.entries.insert(
            "blk.1.ffn_up.weight".into(),
            ImatrixEntry {
                in_sum2: vec![2.0, 6.0, 0.0, 8.0],
                counts: vec![2.0],
            },
        );
        data.entries.insert(
            "blk.0.ffn_up.weight".into(),
            ImatrixEntry {
                in_sum2: vec![1.0, 3.0, 0.0, 4.0],
                counts: vec![2.0],
            },
        );
        let rows = imatrix_stats(&data);
        let r = rows.iter().find(|r| r.layer == Some(1)).unwrap();
        assert_eq!((r.short_name.as_str(), r.elements), ("ffn_up", 4));
        assert_eq!((r.energy, r.min, r.max, r.mean), (8.0, 0.0, 4.0, 2.0));
        assert!((r.std - 2.5f32.sqrt()).abs() < 1e-6); // (1+9+0+16)/4 − 4 = 2.5
        assert_eq!(r.active, 0.75);
        assert_eq!(r.zd, 0.25); // only 4 is more than σ above the mean
        assert_eq!(r.max_share, 0.5);
        let p = [1.0f32 / 8.0, 3.0 / 8.0, 4.0 / 8.0];
        let h: f32 = -p.iter().map(|p| p * p.log2()).sum::<f32>();
        assert!((r.entropy - h).abs() < 1e-6);
        assert!((r.entropy_norm - 100.0 * h / 2.0).abs() < 1e-4);
        assert!((r.cossim - 1.0).abs() < 1e-6);
        assert_eq!(rows[1].cossim, 0.0); // block 0 has no predecessor
        assert_eq!(rows[0].layer, Some(1)); // larger energy first
    }
}
