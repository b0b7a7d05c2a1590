//! Quantizing f32 weights into the 32-element ggml block formats, byte for byte as ggml's
//! reference quantizers (`quantize_row_*_ref` in `ggml-quants.c`, which llama-quantize runs
//! without an importance matrix) and gguf-py's `gguf.quants` (specs/llamacpp.md §2). Readable
//! scalar code: one function per format, each a transcription of the reference.
//!
//! Every step is f32 arithmetic in the reference's order (a fused multiply-add, or a division
//! where the reference multiplies by a reciprocal, would change some codes); scales are stored
//! as IEEE half, rounded to nearest even. Rounding of the codes differs per format, as in ggml:
//!
//! | type | scale | code |
//! |---|---|---|
//! | Q8_0 | d = amax / 127 | round(x / d) half away from zero |
//! | Q4_0 | d = max / −8 (max: the value of largest magnitude) | min(15, trunc(x/d + 8.5)) |
//! | Q4_1 | d = (max − min) / 15, m = min | min(15, trunc((x − min)/d + 0.5)) |
//! | Q5_0 | d = max / −16 | min(31, trunc(x/d + 16.5)) |
//! | Q5_1 | d = (max − min) / 31, m = min | min(31, trunc((x − min)/d + 0.5)) |
//!
//! ("x/d" is `x · (1/d)` with the reciprocal rounded to f32 first, and 0 when d is 0.)

use half::f16;

use super::blocks::{Format, BLOCK};
use crate::error::{Error, Result};

/// Quantize one row (its length a multiple of 32) into `format`'s blocks.
pub fn quantize_row(format: Format, x: &[f32]) -> Result<Vec<u8>> {
    if !x.len().is_multiple_of(BLOCK) {
        return Err(Error::msg(format!(
            "cannot quantize a row of {} values to {format:?}: its blocks hold {BLOCK}; the row length must be a multiple of {BLOCK}",
            x.len()
        )));
    }
    let mut out = Vec::with_capacity(x.len() / BLOCK * format.block_bytes());
    for block in x.chunks_exact(BLOCK) {
        let block: &[f32; BLOCK] = block.try_into().expect("chunks_exact(BLOCK)");
        match format {
            Format::Q8_0 => q8_0(block, &mut out),
            Format::Q4_0 => q4_0(block, &mut out),
            Format::Q4_1 => q4_1(block, &mut out),
            Format::Q5_0 => q5_0(block, &mut out),
            Format::Q5_1 => q5_1(block, &mut out),
        }
    }
    Ok(out)
}

/// Quantize a whole matrix stored row after row (each row `row_len` values).
pub fn quantize(format: Format, x: &[f32], row_len: usize) -> Result<Vec<u8>> {
    if row_len == 0 || !x.len().is_multiple_of(row_len) {
        return Err(Error::msg(format!(
            "cannot quantize {} values as rows of {row_len}",
            x.len()
        )));
    }
    // Rows are independent (blocks never straddle rows), so they are quantized in parallel.
    use rayon::prelude::*;
    let rows: Vec<Vec<u8>> = x
        .par_chunks(row_len)
        .map(|row| quantize_row(format, row))
        .collect::<Result<_>>()?;
    Ok(rows.concat())
}

pub(crate) fn push_f16(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// 1/d, or 0 for a zero scale (an all-zero block).
fn reciprocal(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// The value of largest magnitude, sign kept (the first one on ties).
fn signed_absmax(x: &[f32; BLOCK]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32; BLOCK]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Low nibbles: codes 0..16; high nibbles: codes 16..32.
pub(crate) fn pack_nibbles(q: &[u8; BLOCK], out: &mut Vec<u8>) {
    for j in 0..BLOCK / 2 {
        out.push((q[j] & 0x0f) | ((q[j + BLOCK / 2] & 0x0f) << 4));
    }
}

/// Bit 4 of code j → bit j of a little-endian u32.
pub(crate) fn pack_high_bits(q: &[u8; BLOCK], out: &mut Vec<u8>) {
    let mut qh = 0u32;
    for (j, &c) in q.iter().enumerate() {
        qh |= (((c >> 4) & 1) as u32) << j;
    }
    out.extend_from_slice(&qh.to_le_bytes());
}

fn q8_0(x: &[f32; BLOCK], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = reciprocal(d);
    push_f16(out, d);
    for &v in x {
        out.push(((v * id).round() as i8) as u8);
    }
}

/// Codes `min(limit, trunc(x·id + offset))` of a symmetric format.
fn symmetric_codes(x: &[f32; BLOCK], id: f32, offset: f32, limit: u8) -> [u8; BLOCK] {
    let mut q = [0u8; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        // `as` truncates toward zero like ggml's C cast (and inlines, where `trunc` is a libm call).
        *q = ((v * id + offset) as u8).min(limit);
    }
    q
}

/// Codes `min(limit, trunc((x − min)·id + 0.5))` of an asymmetric format.
fn asymmetric_codes(x: &[f32; BLOCK], min: f32, id: f32, limit: u8) -> [u8; BLOCK] {
    let mut q = [0u8; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as u8).min(limit);
    }
    q
}

fn q4_0(x: &[f32; BLOCK], out: &mut Vec<u8>) {
    let d = signed_absmax(x) / -8.0;
    push_f16(out, d);
    pack_nibbles(&symmetric_codes(x, reciprocal(d), 8.5, 15), out);
}

fn q4_1(x: &[f32; BLOCK], out: &mut Vec<u8>) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    push_f16(out, d);
    push_f16(out, min);
    pack_nibbles(&asymmetric_codes(x, min, reciprocal(d), 15), out);
}

fn q5_0(x: &[f32; BLOCK], out: &mut Vec<u8>) {
    let d = signed_absmax(x) / -16.0;
    push_f16(out, d);
    let q = symmetric_codes(x, reciprocal(d), 16.5, 31);
    pack_high_bits(&q, out);
    pack_nibbles(&q, out);
}

fn q5_1(x: &[f32; BLOCK], out: &mut Vec<u8>) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    push_f16(out, d);
    push_f16(out, min);
    let q = asymmetric_codes(x, min, reciprocal(d), 31);
    pack_high_bits(&q, out);
    pack_nibbles(&q, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::blocks::dequantize_row;

    /// Quantizing then dequantizing stays within half a step of each block's scale, except that
    /// Q4_0 and Q5_0 clamp the far side of their range (codes −8..7, −16..15 times d = max/−8,
    /// max/−16): a value of the opposite sign to the largest can be off by a whole step.
    #[test]
    fn round_trip_error_is_within_the_formats_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for format in Format::ALL {
            let q = quantize_row(format, &x).unwrap();
            assert_eq!(q.len(), 8 * format.block_bytes());
            let y = dequantize_row(format, &q);
            for (b, (xb, yb)) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).enumerate() {
                let (lo, hi) = xb
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let amax = lo.abs().max(hi.abs());
                let (step, steps_off) = match format {
                    Format::Q8_0 => (amax / 127.0, 0.5),
                    Format::Q4_0 => (amax / 8.0, 1.0),
                    Format::Q5_0 => (amax / 16.0, 1.0),
                    Format::Q4_1 => ((hi - lo) / 15.0, 0.5),
                    Format::Q5_1 => ((hi - lo) / 31.0, 0.5),
                };
                // Plus the f16 rounding of the scale (and of m) over the whole range.
                let slack = amax * 2e-3;
                for (a, b2) in xb.iter().zip(yb) {
                    assert!(
                        (a - b2).abs() <= step * steps_off + slack,
                        "{format:?} block {b}: {a} → {b2}, step {step}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_that_is_not_whole_blocks_is_refused_with_its_length() {
        let err = quantize_row(Format::Q4_0, &[0.0; 40])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("40") && err.contains("multiple of 32"),
            "{err}"
        );
    }

    #[test]
    fn an_all_zero_block_has_zero_scale_and_decodes_to_zeros() {
        for format in Format::ALL {
            let q = quantize_row(format, &[0.0; 32]).unwrap();
            assert!(
                dequantize_row(format, &q).iter().all(|&v| v == 0.0),
                "{format:?}"
            );
        }
    }
}
