//! The 32-element ggml block formats, as `ggml-common.h` lays them out (specs/llamacpp.md §2),
//! with a scalar reference dequantizer for each. Every block covers 32 consecutive weights of one
//! row; `d` (and `m`) are f16.
//!
//! | type | bytes | layout | weight j (j < 16: low nibble of qs[j]; j ≥ 16: high nibble of qs[j-16]) |
//! |---|---|---|---|
//! | Q4_0 | 18 | d, qs[16] | (q − 8)·d |
//! | Q4_1 | 20 | d, m, qs[16] | q·d + m |
//! | Q5_0 | 22 | d, qh[4], qs[16] | (q \| bit j of qh « 4) − 16)·d |
//! | Q5_1 | 24 | d, m, qh[4], qs[16] | (q \| bit j of qh « 4)·d + m |
//! | Q8_0 | 34 | d, qs[32] (i8) | qs[j]·d |

use candle_core::quantized::GgmlDType;

/// Weights per block.
pub const BLOCK: usize = 32;

/// The block formats with a reference here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Format {
    /// The format of a ggml type, if it is one of these.
    pub fn of(dtype: GgmlDType) -> Option<Format> {
        Some(match dtype {
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q5_1 => Format::Q5_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            _ => return None,
        })
    }

    /// Every format here.
    pub const ALL: [Format; 5] = [
        Format::Q4_0,
        Format::Q4_1,
        Format::Q5_0,
        Format::Q5_1,
        Format::Q8_0,
    ];

    /// The format called `name` (`Q4_0`, …; case does not matter).
    pub fn of_name(name: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|f| format!("{f:?}").eq_ignore_ascii_case(name))
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
        }
    }
}

/// Read a little-endian f16 at `b[i..i+2]` as f32.
#[inline(always)]
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// IEEE half → single, exact, inlined (the `half` crate's call costs more than the conversion in
/// a per-block loop). Checked against `half` for all 65,536 values.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: shift the mantissa up until its leading one is the implicit bit.
            let shift = mant.leading_zeros() - 21;
            sign | ((127 - 15 + 1 - shift) << 23) | (((mant << shift) & 0x3ff) << 13)
        }
        (31, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// One block format, decoded without a runtime switch (so kernels specialise per format).
pub trait BlockFormat {
    /// Bytes per block.
    const BYTES: usize;
    /// Fill the 32 codes of block `b`; return `(scale, offset)`: weight j = code[j]·scale + offset.
    fn decode(b: &[u8], codes: &mut [f32; BLOCK]) -> (f32, f32);
}

macro_rules! block_format {
    ($name:ident, $format:expr, $bytes:expr) => {
        #[doc = concat!("The ", stringify!($name), " block format.")]
        pub struct $name;
        impl BlockFormat for $name {
            const BYTES: usize = $bytes;
            #[inline(always)]
            fn decode(b: &[u8], codes: &mut [f32; BLOCK]) -> (f32, f32) {
                decode_block($format, b, codes)
            }
        }
    };
}

block_format!(Q4_0, Format::Q4_0, 18);
block_format!(Q4_1, Format::Q4_1, 20);
block_format!(Q5_0, Format::Q5_0, 22);
block_format!(Q5_1, Format::Q5_1, 24);
block_format!(Q8_0, Format::Q8_0, 34);

/// The 32 integer codes and the `(scale, offset)` of one block: weight j = code[j]·scale + offset.
/// (With a constant `format`, inlining removes the switch.)
#[inline(always)]
pub fn decode_block(format: Format, b: &[u8], codes: &mut [f32; BLOCK]) -> (f32, f32) {
    let d = f16_at(b, 0);
    match format {
        Format::Q4_0 | Format::Q4_1 => {
            let (start, m) = if format == Format::Q4_0 {
                (2, -8.0 * d)
            } else {
                (4, f16_at(b, 2))
            };
            let qs: &[u8; 16] = b[start..start + 16].try_into().expect("block length");
            let (low, high) = codes.split_at_mut(16);
            for j in 0..16 {
                low[j] = (qs[j] & 0x0F) as f32;
                high[j] = (qs[j] >> 4) as f32;
            }
            (d, m)
        }
        Format::Q5_0 | Format::Q5_1 => {
            let (start, m) = if format == Format::Q5_0 {
                (2, -16.0 * d)
            } else {
                (4, f16_at(b, 2))
            };
            let qh = u32::from_le_bytes(b[start..start + 4].try_into().expect("block length"));
            let qs: &[u8; 16] = b[start + 4..start + 20].try_into().expect("block length");
            let (low, high) = codes.split_at_mut(16);
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                low[j] = ((qs[j] & 0x0F) as u32 | h0) as f32;
                high[j] = ((qs[j] >> 4) as u32 | h1) as f32;
            }
            (d, m)
        }
        Format::Q8_0 => {
            let qs: &[u8; 32] = b[2..34].try_into().expect("block length");
            let signed: [i8; 32] = qs.map(|q| q as i8);
            for j in 0..BLOCK {
                codes[j] = signed[j] as f32;
            }
            (d, 0.0)
        }
    }
}

/// Reference: the weights of one row of `format` blocks.
pub fn dequantize_row(format: Format, row: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(row.len() / format.block_bytes() * BLOCK);
    let mut codes = [0f32; BLOCK];
    for block in row.chunks_exact(format.block_bytes()) {
        let (scale, offset) = decode_block(format, block, &mut codes);
        out.extend(codes.iter().map(|c| c * scale + offset));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn reference_dequantization_equals_candles() {
        let w = Tensor::randn(0f32, 1.0, (3, 128), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let format = Format::of(dtype).unwrap();
            let data = q.data().unwrap();
            let row_bytes = 128 / BLOCK * format.block_bytes();
            let want = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (r, want_row) in want.iter().enumerate() {
                let got = dequantize_row(format, &data[r * row_bytes..(r + 1) * row_bytes]);
                let max = got
                    .iter()
                    .zip(want_row)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(max < 1e-6, "{dtype:?} row {r}: max diff {max}");
            }
        }
    }
}
