//! Rounding a layer's input ("activations") to a few bits before its product — the book chapter's
//! "dynamic range" quantization: the range of each group of values is taken from the live tensor
//! (dynamic) or from calibration text (static), the values are mapped to signed integers of `bits`
//! bits with one scale per group, and the product then runs on the rounded values.
//!
//! - **Groups** ([`Granularity`]): the whole tensor (one scale, what static quantization and
//!   PyTorch's `quantize_dynamic` per-tensor use), each token (one row: torchao's W8A8 dynamic,
//!   LLM.int8's vector-wise), or blocks of 32 / 256 values along a row. With 8 bits, blocks of 32
//!   are exactly llama.cpp's on-the-fly Q8_0 (and Q8_1: the same values) rounding, and blocks of
//!   256 its Q8_K rounding (rows of a multiple of 256): both call candle's ggml quantizers, the ones
//!   [`super::ggml_matmul`] rounds with, so "8-bit blocks" here and llama.cpp's arithmetic are one
//!   implementation. [`Granularity::WeightPartner`] is that arithmetic itself: each quantized
//!   weight's own partner type, dotted in integers.
//! - **Symmetric integers**: with `qmax = 2^(bits−1) − 1`, `scale = max|x| / qmax` over the group
//!   and `x̂ = scale · clamp(round(x / scale), −qmax, qmax)`. A static range saturates: values
//!   beyond it clamp to ±qmax.
//! - **Outlier columns** (LLM.int8): with a threshold, every input column whose largest |x| in the
//!   live tensor exceeds it is kept unrounded (f32), and the scales come from the other columns
//!   only. [`OutlierCount`] counts the columns kept, so a report can say what fraction stayed f32.
//!
//! Shapes: the input is `rows × k`, row-major (a token per row).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0, GgmlType};
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

/// Which values share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for the whole input tensor.
    Tensor,
    /// One scale per token (row).
    Token,
    /// One scale per `n` consecutive values of a row (32 or 256); a row's last block may be
    /// shorter when `n` does not divide it.
    Block(usize),
    /// llama.cpp's CPU arithmetic: a quantized weight's input is rounded to its dot-product
    /// partner (Q8_0, Q8_1 or Q8_K) and dotted in integers; dense weights keep f32 inputs.
    WeightPartner,
}

impl Granularity {
    /// The option value that names it: "tensor", "token", "block32", "block256", "ggml".
    pub fn name(self) -> String {
        match self {
            Granularity::Tensor => "tensor".into(),
            Granularity::Token => "token".into(),
            Granularity::Block(n) => format!("block{n}"),
            Granularity::WeightPartner => "ggml".into(),
        }
    }
}

/// How many input columns were kept in f32 as outliers, out of how many seen (summed over every
/// product since the count began; shared by all layers of a model).
#[derive(Debug, Default)]
pub struct OutlierCount {
    kept: AtomicU64,
    columns: AtomicU64,
}

impl OutlierCount {
    /// (columns kept, columns seen) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.kept.load(Ordering::Relaxed),
            self.columns.load(Ordering::Relaxed),
        )
    }

    fn add(&self, kept: u64, columns: u64) {
        self.kept.fetch_add(kept, Ordering::Relaxed);
        self.columns.fetch_add(columns, Ordering::Relaxed);
    }
}

/// How one layer rounds its input.
#[derive(Debug, Clone)]
pub struct InputRounding {
    /// Bits per rounded value, 2–8.
    pub bits: u32,
    pub granularity: Granularity,
    /// Static mode: this layer's calibrated largest |x| (the one scale of the tensor); None:
    /// dynamic, ranges from the live tensor.
    pub static_absmax: Option<f32>,
    /// Columns whose largest |x| exceeds this stay f32 (LLM.int8); None: every column rounded.
    pub outlier_threshold: Option<f32>,
    /// Where kept columns are counted.
    pub outliers: Arc<OutlierCount>,
    /// How the model was prepared, for reports (e.g. "SmoothQuant α 0.5"); not used to compute.
    pub note: Option<String>,
}

impl InputRounding {
    /// Dynamic rounding to `bits` bits with one scale per `granularity` group.
    pub fn dynamic(bits: u32, granularity: Granularity) -> Self {
        InputRounding {
            bits,
            granularity,
            static_absmax: None,
            outlier_threshold: None,
            outliers: Arc::default(),
            note: None,
        }
    }

    /// llama.cpp's CPU arithmetic ([`Granularity::WeightPartner`]).
    pub fn ggml() -> Self {
        Self::dynamic(8, Granularity::WeightPartner)
    }

    /// Whether a quantized weight of `dtype` is computed by ggml's integer kernels
    /// ([`super::ggml_matmul`]) under this rounding: the llama.cpp mode, or 8-bit blocks of the
    /// size of the weight's partner type, with no static range and no outlier columns.
    pub fn uses_ggml_kernel(&self, dtype: GgmlDType) -> bool {
        let plain =
            self.bits == 8 && self.static_absmax.is_none() && self.outlier_threshold.is_none();
        let partner_block = match dtype {
            GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0 => 32,
            GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {
                256
            }
            _ => return false,
        };
        match self.granularity {
            Granularity::WeightPartner => true,
            Granularity::Block(n) => plain && n == partner_block,
            _ => false,
        }
    }

    /// One line for reports: "8-bit per-token dynamic, columns above 6 kept in f32".
    pub fn describe(&self) -> String {
        let groups = match self.granularity {
            Granularity::Tensor => "per-tensor".to_string(),
            Granularity::Token => "per-token".to_string(),
            Granularity::Block(n) => format!("blocks of {n}"),
            Granularity::WeightPartner => {
                return "8-bit blocks as llama.cpp's CPU kernels (Q8_0/Q8_1/Q8_K partner of each weight type)".into()
            }
        };
        let mode = if self.static_absmax.is_some() {
            "static (calibrated)"
        } else {
            "dynamic"
        };
        let mut s = format!("{}-bit {groups} {mode}", self.bits);
        if let Some(t) = self.outlier_threshold {
            s += &format!(", columns above {t} kept in f32");
        }
        if let Some(n) = &self.note {
            s += &format!(", {n}");
        }
        s
    }

    /// `x` (`rows` × `k`, row-major) rounded as this layer rounds its input. A
    /// [`Granularity::WeightPartner`] rounding leaves `x` as it is (dense weights keep f32).
    pub fn round(&self, x: &[f32], k: usize) -> Vec<f32> {
        let k = k.max(1);
        let mut out = x.to_vec();
        if self.granularity == Granularity::WeightPartner {
            return out;
        }
        let keep = self.outlier_columns(x, k);
        let qmax = ((1u32 << (self.bits - 1)) - 1) as f32;
        match self.granularity {
            Granularity::Tensor => {
                let absmax = self.static_absmax.unwrap_or_else(|| {
                    x.par_chunks(k)
                        .map(|row| absmax(row, 0, keep.as_deref()))
                        .reduce(|| 0.0, f32::max)
                });
                out.par_chunks_mut(k)
                    .for_each(|row| round_group(row, 0, absmax / qmax, qmax, keep.as_deref()));
            }
            Granularity::Token => out.par_chunks_mut(k).for_each(|row| {
                let a = absmax(row, 0, keep.as_deref());
                round_group(row, 0, a / qmax, qmax, keep.as_deref());
            }),
            Granularity::Block(n) => {
                let ggml = self.bits == 8 && keep.is_none();
                out.par_chunks_mut(k).for_each(|row| match n {
                    32 if ggml && k.is_multiple_of(32) => ggml_round::<BlockQ8_0>(row),
                    256 if ggml && k.is_multiple_of(256) => ggml_round::<BlockQ8K>(row),
                    _ => {
                        for (b, block) in row.chunks_mut(n.max(1)).enumerate() {
                            let keep = keep.as_deref().map(|m| &m[b * n..b * n + block.len()]);
                            let a = absmax(block, 0, keep);
                            round_group(block, 0, a / qmax, qmax, keep);
                        }
                    }
                });
            }
            Granularity::WeightPartner => unreachable!("returned above"),
        }
        out
    }

    /// With an outlier threshold: which of the `k` columns of `x` to keep unrounded (counted).
    fn outlier_columns(&self, x: &[f32], k: usize) -> Option<Vec<bool>> {
        let threshold = self.outlier_threshold?;
        let mut col_max = vec![0f32; k];
        for row in x.chunks(k) {
            for (m, v) in col_max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let keep: Vec<bool> = col_max.iter().map(|&m| m > threshold).collect();
        let kept = keep.iter().filter(|&&b| b).count();
        self.outliers.add(kept as u64, k as u64);
        Some(keep)
    }
}

/// Largest |v| of the values of `group` not kept (`keep[i]` true), from `start`.
fn absmax(group: &[f32], start: usize, keep: Option<&[bool]>) -> f32 {
    group[start..]
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.is_none_or(|m| !m[start + i]))
        .fold(0f32, |a, (_, v)| a.max(v.abs()))
}

/// Round the values of `group` (from `start`) not kept to multiples of `scale` within ±qmax.
fn round_group(group: &mut [f32], start: usize, scale: f32, qmax: f32, keep: Option<&[bool]>) {
    for (i, v) in group[start..].iter_mut().enumerate() {
        if keep.is_some_and(|m| m[start + i]) {
            continue;
        }
        *v = if scale > 0.0 {
            (*v / scale).round().clamp(-qmax, qmax) * scale
        } else {
            0.0
        };
    }
}

/// `row` through ggml's own quantizer of type `T` and back: llama.cpp's on-the-fly rounding.
fn ggml_round<T: GgmlType>(row: &mut [f32]) {
    let mut blocks = vec![T::zeros(); row.len() / T::BLCK_SIZE];
    T::from_float(row, &mut blocks);
    T::to_float(&blocks, row);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                ((h >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn eight_bit_blocks_of_32_are_q8_0_bit_for_bit() {
        let x = values(4 * 96, 1);
        let y = InputRounding::dynamic(8, Granularity::Block(32)).round(&x, 96);
        let mut blocks = vec![BlockQ8_0::zeros(); x.len() / 32];
        BlockQ8_0::from_float(&x, &mut blocks);
        let mut want = vec![0f32; x.len()];
        BlockQ8_0::to_float(&blocks, &mut want);
        assert_eq!(y, want);
    }

    #[test]
    fn eight_bit_blocks_of_256_are_q8_k_bit_for_bit() {
        let x = values(2 * 512, 2);
        let y = InputRounding::dynamic(8, Granularity::Block(256)).round(&x, 512);
        let mut blocks = vec![BlockQ8K::zeros(); x.len() / 256];
        BlockQ8K::from_float(&x, &mut blocks);
        let mut want = vec![0f32; x.len()];
        BlockQ8K::to_float(&blocks, &mut want);
        assert_eq!(y, want);
    }

    #[test]
    fn each_group_has_at_most_2_to_the_bits_levels_and_bounded_error() {
        let (rows, k) = (3, 80);
        let x = values(rows * k, 3);
        for bits in [4u32, 6, 8] {
            let qmax = ((1 << (bits - 1)) - 1) as f32;
            for g in [
                Granularity::Tensor,
                Granularity::Token,
                Granularity::Block(32),
            ] {
                let y = InputRounding::dynamic(bits, g).round(&x, k);
                // Per token: the error of each value is at most half a step of its row's scale.
                for (xr, yr) in x.chunks(k).zip(y.chunks(k)) {
                    let step = xr.iter().fold(0f32, |a, v| a.max(v.abs())) / qmax;
                    for (a, b) in xr.iter().zip(yr) {
                        let bound = match g {
                            Granularity::Tensor => {
                                x.iter().fold(0f32, |a, v| a.max(v.abs())) / qmax
                            }
                            _ => step,
                        };
                        assert!(
                            (a - b).abs() <= bound / 2.0 + 1e-6,
                            "{g:?} {bits}: {a} → {b}"
                        );
                    }
                    if g == Granularity::Token {
                        let mut levels: Vec<i64> =
                            yr.iter().map(|v| (v / step).round() as i64).collect();
                        levels.sort();
                        levels.dedup();
                        assert!(levels.len() as f32 <= 2.0 * qmax + 1.0);
                    }
                }
            }
        }
    }

    #[test]
    fn a_short_last_block_gets_its_own_scale() {
        // 40 values in blocks of 32: the last 8 have a small range and keep their precision.
        let mut x = vec![100f32; 32];
        x.extend([0.01f32, -0.02, 0.03, 0.0, 0.005, 0.015, -0.01, 0.02]);
        let y = InputRounding::dynamic(4, Granularity::Block(32)).round(&x, 40);
        for (a, b) in x[32..].iter().zip(&y[32..]) {
            assert!((a - b).abs() <= 0.03 / 7.0 / 2.0 + 1e-7);
        }
    }

    #[test]
    fn static_ranges_saturate() {
        let mut r = InputRounding::dynamic(8, Granularity::Tensor);
        r.static_absmax = Some(1.0);
        let y = r.round(&[0.5, 3.0, -2.0, 1.0], 4);
        assert_eq!(y[1], 1.0);
        assert_eq!(y[2], -1.0);
        assert!((y[0] - 64.0 / 127.0).abs() < 1e-6);
    }

    #[test]
    fn outlier_columns_stay_exact_and_are_counted() {
        let mut r = InputRounding::dynamic(4, Granularity::Token);
        r.outlier_threshold = Some(6.0);
        // Column 1 holds an outlier (20 in row 0): kept exactly, in both rows.
        let x = [0.3f32, 20.0, -0.7, 0.11, 0.2, 1.5, 0.9, -0.4];
        let y = r.round(&x, 4);
        assert_eq!((y[1], y[5]), (20.0, 1.5));
        // The other columns' scale comes from them alone (0.7 / 7 = 0.1), not from 20.
        assert!((y[0] - 0.3).abs() < 1e-6 && (y[2] + 0.7).abs() < 1e-6);
        assert_eq!(r.outliers.get(), (1, 4));
    }

    #[test]
    fn ggml_kernel_only_where_its_rounding_is_the_one_asked() {
        let b32 = InputRounding::dynamic(8, Granularity::Block(32));
        assert!(b32.uses_ggml_kernel(GgmlDType::Q8_0) && b32.uses_ggml_kernel(GgmlDType::Q4_1));
        assert!(!b32.uses_ggml_kernel(GgmlDType::Q4K));
        let b256 = InputRounding::dynamic(8, Granularity::Block(256));
        assert!(b256.uses_ggml_kernel(GgmlDType::Q6K) && !b256.uses_ggml_kernel(GgmlDType::Q8_0));
        assert!(
            !InputRounding::dynamic(4, Granularity::Block(32)).uses_ggml_kernel(GgmlDType::Q8_0)
        );
        assert!(!InputRounding::dynamic(8, Granularity::Token).uses_ggml_kernel(GgmlDType::Q8_0));
        assert!(InputRounding::ggml().uses_ggml_kernel(GgmlDType::Q3K));
    }
}
