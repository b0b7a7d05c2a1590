//! bitsandbytes' 8-bit "dynamic" data type and its block-wise quantization, the storage of the
//! 8-bit optimizer's moments (Dettmers et al., *8-bit Optimizers via Block-wise Quantization*).
//!
//! The dynamic type is a float with a variable split between exponent and fraction: after the
//! sign, a run of zero bits says the decimal exponent (10⁰ … 10⁻⁶), the first one bit ends it, and
//! the bits left over are a linear fraction between 0.1 and 1. Small magnitudes get few fraction
//! bits and large ones many, so the 256 codes cover seven decades, which Adam's second moment
//! needs. The signed map (for the first moment) spends one bit on the sign; the unsigned one (for
//! the second moment, never negative) spends it on one more fraction bit.
//!
//! A block of values is stored as its absolute maximum (f32) and, per value, the index of the
//! code nearest to value/absmax. Both maps hold 0 and 1 exactly, so zeros and each block's
//! largest value survive unchanged.

use rayon::prelude::*;

/// The 256 code values of the dynamic type, ascending. `signed`: the first moment's map (±);
/// otherwise the second moment's (≥ 0).
pub fn dynamic_map(signed: bool) -> Vec<f32> {
    const EXPONENTS: i32 = 7; // decades 10⁻⁶ … 10⁰
    let mut codes = Vec::with_capacity(256);
    for i in 0..EXPONENTS {
        // Within decade i, the fraction has i bits (signed) or i + 1 (unsigned): 2^bits values,
        // the midpoints of that many equal steps between 0.1 and 1.
        let steps = if signed {
            1usize << i
        } else {
            1usize << (i + 1)
        };
        let bounds = linspace_f32(0.1, 1.0, steps + 1);
        // f32 arithmetic throughout, as the reference computes it.
        let decade = 10f64.powi(i - (EXPONENTS - 1)) as f32;
        for pair in bounds.windows(2) {
            let mid = (pair[0] + pair[1]) / 2.0;
            codes.push(decade * mid);
            if signed {
                codes.push(-decade * mid);
            }
        }
    }
    codes.push(0.0);
    codes.push(1.0);
    debug_assert_eq!(codes.len(), 256);
    codes.sort_by(f32::total_cmp);
    codes
}

/// `n` evenly spaced f32 values from `start` to `end`, computed as PyTorch's CPU `linspace`
/// does (from the start for the first half, from the end for the second), so the maps match
/// bitsandbytes' bit for bit.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// Values stored block by block as 8-bit codes of a map with one f32 absmax per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Blockwise8 {
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
    pub block: usize,
}

impl Blockwise8 {
    /// All zeros (code of 0.0 in `map`), for `n` values in blocks of `block`.
    pub fn zeros(n: usize, block: usize, map: &[f32]) -> Blockwise8 {
        let zero = nearest_code(map, 0.0);
        Blockwise8 {
            codes: vec![zero; n],
            absmax: vec![0.0; n.div_ceil(block)],
            block,
        }
    }

    /// Quantize `values`: per block, absmax (1 for an all-zero block, as bitsandbytes does) and
    /// the nearest code of each value / absmax (the lower code on a tie).
    pub fn quantize(values: &[f32], block: usize, map: &[f32]) -> Blockwise8 {
        let mut codes = vec![0u8; values.len()];
        // Blocks are independent: one task per block (a few thousand values each).
        let absmax: Vec<f32> = codes
            .par_chunks_mut(block)
            .zip(values.par_chunks(block))
            .map(|(out, chunk)| {
                let mut max = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                if max == 0.0 {
                    max = 1.0;
                }
                for (c, v) in out.iter_mut().zip(chunk) {
                    *c = nearest_code(map, v / max);
                }
                max
            })
            .collect();
        Blockwise8 {
            codes,
            absmax,
            block,
        }
    }

    /// The values back: code value × its block's absmax.
    pub fn dequantize(&self, map: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.codes.len()];
        out.par_chunks_mut(self.block)
            .zip(self.codes.par_chunks(self.block))
            .zip(self.absmax.par_iter())
            .for_each(|((out, codes), max)| {
                for (o, &c) in out.iter_mut().zip(codes) {
                    *o = map[c as usize] * max;
                }
            });
        out
    }

    /// Bytes held: one per value, four per block.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.absmax.len()
    }
}

/// The index of the code in the ascending `map` nearest to `x` (the lower one on a tie).
pub fn nearest_code(map: &[f32], x: f32) -> u8 {
    let above = map.partition_point(|&c| c < x);
    let index = if above == 0 {
        0
    } else if above == map.len() {
        map.len() - 1
    } else if x - map[above - 1] <= map[above] - x {
        above - 1
    } else {
        above
    };
    index as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_maps_hold_256_ascending_codes_with_zero_and_one() {
        for signed in [true, false] {
            let map = dynamic_map(signed);
            assert_eq!(map.len(), 256);
            assert!(map.windows(2).all(|w| w[0] <= w[1]));
            assert!(map.contains(&0.0) && map.contains(&1.0));
            assert_eq!(map[0] < 0.0, signed);
        }
        // The smallest positive code is in the 10⁻⁶ decade: seven decades of range.
        let u = dynamic_map(false);
        assert!(u[1] > 1e-7 && u[1] < 1e-6, "{}", u[1]);
    }

    #[test]
    fn quantizing_keeps_zeros_and_each_blocks_largest_value_exactly() {
        let map = dynamic_map(true);
        let values: Vec<f32> = (0..300)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut with_zero = values.clone();
        with_zero[5] = 0.0;
        let q = Blockwise8::quantize(&with_zero, 128, &map);
        assert_eq!(q.absmax.len(), 3);
        let back = q.dequantize(&map);
        assert_eq!(back[5], 0.0);
        for (block, max) in with_zero.chunks(128).zip(&q.absmax) {
            assert_eq!(*max, block.iter().fold(0f32, |m, v| m.max(v.abs())));
        }
        // Each value within half a code step of the largest step at its magnitude.
        for (v, b) in with_zero.iter().zip(&back) {
            assert!((v - b).abs() <= 0.02 * 50.0 / 7.0, "{v} → {b}");
        }
    }

    #[test]
    fn nearest_code_breaks_ties_downwards_and_clamps() {
        let map = [-1.0f32, 0.0, 0.5, 1.0];
        assert_eq!(nearest_code(&map, 0.25), 1);
        assert_eq!(nearest_code(&map, 0.26), 2);
        assert_eq!(nearest_code(&map, 2.0), 3);
        assert_eq!(nearest_code(&map, -3.0), 0);
    }
}
