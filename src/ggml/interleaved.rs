//! Generation's fast path for Q4_0, Q4_1 and Q8_0 weights: rows interleaved in groups of 16 and
//! activations rounded to 16-bit integers, so that one integer multiply-add instruction works on
//! 16 rows × 2 weights at once.
//!
//! Why: the row-by-row kernel (`matvec`) converts every weight code to f32 and reduces every row
//! separately, about 20 instructions a block of 32 weights; generation spent half its time there.
//! Interleaved, lane r of a vector is row r of the group: a block's codes for position pair
//! (i, j) of 16 rows are one 32-bit lane each, multiplied against the activation pair
//! (x_i, x_j) broadcast to all lanes (`vpdpwssd`), and the per-block scaling is one vector
//! operation for 16 rows. About 4 instructions per 32 weights for Q4, 2 for Q8_0.
//!
//! Several activation rows (a server's batch, a short prompt) share the decoding: each block's
//! codes are widened once and multiplied against up to [`ROWS_AT_ONCE`] rows, so 16 rows cost
//! about a third of 16 single-row products. A row's arithmetic is the same however many rows
//! run beside it, so its result is too (batch invariance, tested below).
//!
//! Precision: llama.cpp rounds activations to 8 bits for the same instruction trick, which costs
//! SmolLM2 its answers (docs/models-and-chat.md, "How quantized models compute"). Here each block of 32 activations
//! is rounded to 16 bits against its own largest magnitude: a relative error of at most 2⁻¹⁶ of
//! that magnitude per activation, 256 times finer than 8 bits. The offset term of Q4_0/Q4_1
//! (`m·Σx`) uses the exact f32 sum.
//!
//! Layout of a group of 16 rows (same bytes as the GGUF rows, rearranged), block by block:
//! - Q4_0: `d[16]` (f16), then 16 chunks of 16 bytes; chunk j, byte r = byte j of row r's codes
//!   (low nibble: weight j, high nibble: weight j+16).
//! - Q4_1: `d[16]`, `m[16]`, then the codes as Q4_0.
//! - Q8_0: `d[16]`, then 16 chunks of 32 bytes; chunk p holds row r's weights 2p, 2p+1 at 2r.
//!
//! Activations per block: a scale `s` and 16 pairs of i16 packed in an i32 (first in the low
//! half): for Q4, pair j = (x_j, x_j+16); for Q8_0, pair p = (x_2p, x_2p+1).
//!
//! [`reference_matmul`] is the plain-Rust statement of this arithmetic; the AVX-512 VNNI kernel
//! (`interleaved_avx512`) is tested against it, and both against dequantize-then-dot.

use rayon::prelude::*;

use super::blocks::{f16_at, Format, BLOCK};

/// Rows per interleaved group (the lanes of a 512-bit vector of i32).
pub const GROUP: usize = 16;

/// Groups per parallel task.
const GROUPS_PER_TASK: usize = 4;

/// Most activation rows multiplied together against one decoded block of weights.
pub const ROWS_AT_ONCE: usize = 16;

/// Below this many weight bytes (times activation rows) a product runs on the calling thread.
const SERIAL_BYTES: usize = 1 << 17;

/// Weights rearranged for [`matmul`].
#[derive(Debug, Clone)]
pub struct Interleaved {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Vec<u8>,
}

/// Whether `format` with `rows` has an interleaved layout.
pub fn supports(format: Format, rows: usize, cols: usize) -> bool {
    matches!(format, Format::Q4_0 | Format::Q4_1 | Format::Q8_0)
        && rows.is_multiple_of(GROUP)
        && cols.is_multiple_of(BLOCK)
}

/// Bytes before a block's codes in a group: the scales (and minimums).
fn header_bytes(format: Format) -> usize {
    match format {
        Format::Q4_1 => 4 * GROUP,
        _ => 2 * GROUP,
    }
}

/// Rearrange GGUF rows (`rows` × `cols` weights of `format`) into groups of 16; None when the
/// format or shape has no interleaved layout.
pub fn interleave(format: Format, data: &[u8], rows: usize, cols: usize) -> Option<Interleaved> {
    if !supports(format, rows, cols) {
        return None;
    }
    let bb = format.block_bytes();
    let blocks = cols / BLOCK;
    let row_bytes = blocks * bb;
    let mut out = vec![0u8; data.len()];
    out.par_chunks_mut(GROUP * row_bytes)
        .enumerate()
        .for_each(|(g, group)| {
            for b in 0..blocks {
                let dst = &mut group[b * GROUP * bb..(b + 1) * GROUP * bb];
                let src = |r: usize| {
                    let at = (g * GROUP + r) * row_bytes + b * bb;
                    &data[at..at + bb]
                };
                let head = header_bytes(format);
                for r in 0..GROUP {
                    let block = src(r);
                    dst[2 * r..2 * r + 2].copy_from_slice(&block[0..2]);
                    if format == Format::Q4_1 {
                        dst[2 * GROUP + 2 * r..2 * GROUP + 2 * r + 2].copy_from_slice(&block[2..4]);
                    }
                    let codes = &block[head / GROUP..];
                    match format {
                        Format::Q8_0 => {
                            for p in 0..16 {
                                let at = head + p * 2 * GROUP + 2 * r;
                                dst[at..at + 2].copy_from_slice(&codes[2 * p..2 * p + 2]);
                            }
                        }
                        _ => {
                            for (j, &byte) in codes.iter().enumerate() {
                                dst[head + j * GROUP + r] = byte;
                            }
                        }
                    }
                }
            }
        });
    Some(Interleaved {
        format,
        rows,
        cols,
        bytes: out,
    })
}

/// One activation row rounded for the kernel: per block, the scale and 16 packed i16 pairs.
#[derive(Debug, Clone)]
pub struct Activations {
    pub scales: Vec<f32>,
    pub pairs: Vec<i32>,
    /// Σ x per block (exact f32), for the offset term.
    pub sums: Vec<f32>,
}

/// Round `x` (one row of `cols`) to 16-bit blocks in the pair order of `format`.
pub fn round_activations(format: Format, x: &[f32]) -> Activations {
    let blocks = x.len() / BLOCK;
    let mut scales = Vec::with_capacity(blocks);
    let mut pairs = Vec::with_capacity(blocks * 16);
    let mut sums = Vec::with_capacity(blocks);
    for xb in x.chunks_exact(BLOCK) {
        let max = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = max / 32767.0;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        // Round half away from zero, as `f32::round` (which is a libm call on baseline x86-64,
        // slower than this whole loop); |v·inv| ≤ 32767 by construction.
        let q = |v: f32| {
            let t = v * inv;
            (t + 0.5f32.copysign(t)) as i32 as i16 as u16 as u32
        };
        for p in 0..16 {
            let (a, b) = match format {
                Format::Q8_0 => (xb[2 * p], xb[2 * p + 1]),
                _ => (xb[p], xb[p + 16]),
            };
            pairs.push((q(a) | (q(b) << 16)) as i32);
        }
        scales.push(s);
        sums.push(xb.iter().sum());
    }
    Activations {
        scales,
        pairs,
        sums,
    }
}

/// One group's 16 outputs for one activation row, in plain Rust: for each block, the integer
/// dot of codes and rounded activations per row, scaled by `d·s`, plus `m·Σx`.
fn reference_group(w: &Interleaved, group: &[u8], a: &Activations, out: &mut [f32]) {
    let format = w.format;
    let bb = format.block_bytes();
    let head = header_bytes(format);
    for (r, y) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for b in 0..w.cols / BLOCK {
            let blk = &group[b * GROUP * bb..(b + 1) * GROUP * bb];
            let d = f16_at(blk, 2 * r);
            let mut dot = 0i32;
            for p in 0..16 {
                let pair = a.pairs[b * 16 + p];
                let (x0, x1) = (pair as i16 as i32, (pair >> 16) as i16 as i32);
                let (w0, w1) = match format {
                    Format::Q8_0 => {
                        let at = head + p * 2 * GROUP + 2 * r;
                        (blk[at] as i8 as i32, blk[at + 1] as i8 as i32)
                    }
                    _ => {
                        let byte = blk[head + p * GROUP + r];
                        ((byte & 0x0F) as i32, (byte >> 4) as i32)
                    }
                };
                dot += w0 * x0 + w1 * x1;
            }
            acc += d * a.scales[b] * dot as f32;
            acc += match format {
                Format::Q4_1 => f16_at(blk, 2 * GROUP + 2 * r) * a.sums[b],
                Format::Q4_0 => -8.0 * d * a.sums[b],
                _ => 0.0,
            };
        }
        *y = acc;
    }
}

/// `y[m][n] = Σ_k w[n][k] · x[m][k]` in plain Rust (the statement of the arithmetic).
pub fn reference_matmul(w: &Interleaved, x: &[f32], m: usize) -> Vec<f32> {
    let group_bytes = w.bytes.len() / (w.rows / GROUP);
    let mut y = vec![0f32; m * w.rows];
    for r in 0..m {
        let a = round_activations(w.format, &x[r * w.cols..(r + 1) * w.cols]);
        for (g, group) in w.bytes.chunks_exact(group_bytes).enumerate() {
            let start = r * w.rows + g * GROUP;
            reference_group(w, group, &a, &mut y[start..start + GROUP]);
        }
    }
    y
}

/// Whether this CPU runs the fast kernel (AVX-512 with VNNI), within `TUNELAB_SIMD`'s cap.
pub fn fast_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::matvec::simd() == super::matvec::Simd::Avx512
            && super::interleaved_avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `y[m][n] = Σ_k w[n][k] · x[m][k]` with the AVX-512 VNNI kernel, groups in parallel; returns
/// y as `m × rows`. The caller checks [`fast_kernel_available`].
pub fn matmul(w: &Interleaved, x: &[f32], m: usize) -> Vec<f32> {
    let acts: Vec<Activations> = (0..m)
        .map(|r| round_activations(w.format, &x[r * w.cols..(r + 1) * w.cols]))
        .collect();
    let group_bytes = w.bytes.len() / (w.rows / GROUP);
    // rows × m, so each task owns whole groups; transposed below when m > 1.
    let mut y_t = vec![0f32; w.rows * m];
    let task = |(task, out): (usize, &mut [f32])| {
        let first = task * GROUPS_PER_TASK;
        for (i, out_group) in out.chunks_exact_mut(GROUP * m).enumerate() {
            let g = first + i;
            let group = &w.bytes[g * group_bytes..(g + 1) * group_bytes];
            for (rows, ys) in acts
                .chunks(ROWS_AT_ONCE)
                .zip(out_group.chunks_mut(ROWS_AT_ONCE * GROUP))
            {
                run_group(w, group, rows, ys);
            }
        }
    };
    // A small matrix is done before other threads could even pick up their share.
    let chunk = GROUPS_PER_TASK * GROUP * m;
    if w.bytes.len() * m < SERIAL_BYTES {
        y_t.chunks_mut(chunk).enumerate().for_each(task);
    } else {
        y_t.par_chunks_mut(chunk).enumerate().for_each(task);
    }
    // y_t holds, per group, m rows of 16 outputs.
    let mut y = vec![0f32; m * w.rows];
    for g in 0..w.rows / GROUP {
        for r in 0..m {
            let src = &y_t[(g * m + r) * GROUP..(g * m + r + 1) * GROUP];
            y[r * w.rows + g * GROUP..r * w.rows + (g + 1) * GROUP].copy_from_slice(src);
        }
    }
    y
}

/// One group's outputs for a few activation rows (`out`: 16 per row): the vector kernel where
/// the CPU has it, which decodes each block of weights once for all of them.
fn run_group(w: &Interleaved, group: &[u8], rows: &[Activations], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if fast_kernel_available() {
        use super::interleaved_avx512::group_dot;
        // SAFETY: the CPU has AVX-512 F/BW/VNNI and F16C; `group` is one whole group of `w`,
        // every row was rounded for `w.format` from a row of `w.cols`, and `out` holds 16 per
        // row.
        unsafe { group_dot(w.format, group, w.cols, rows, out) };
        return;
    }
    for (a, ys) in rows.iter().zip(out.chunks_exact_mut(GROUP)) {
        reference_group(w, group, a, ys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::blocks::dequantize_row;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn quantized(dtype: GgmlDType, n: usize, k: usize) -> (Format, Vec<u8>) {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        (Format::of(dtype).unwrap(), q.data().unwrap().to_vec())
    }

    /// `m` rows of `k` standard-normal activations.
    fn random_rows(m: usize, k: usize) -> Vec<f32> {
        Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Against dequantize-then-dot in f32: the only differences are the 16-bit rounding of the
    /// activations and the order of summation, measured against Σ|w·x|.
    #[test]
    fn interleaved_products_match_dequantize_then_dot() {
        let (n, k, m) = (48, 256, 3);
        let x = random_rows(m, k);
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (format, data) = quantized(dtype, n, k);
            let w = interleave(format, &data, n, k).unwrap();
            assert_eq!(w.bytes.len(), data.len());
            let reference = reference_matmul(&w, &x, m);
            let fast = matmul(&w, &x, m);
            let row_bytes = k / BLOCK * format.block_bytes();
            let mut worst = (0f32, 0f32);
            for r in 0..m {
                for j in 0..n {
                    let wr = dequantize_row(format, &data[j * row_bytes..(j + 1) * row_bytes]);
                    let xr = &x[r * k..(r + 1) * k];
                    let want: f32 = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
                    let size: f32 = wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
                    let at = r * n + j;
                    worst.0 = worst.0.max((reference[at] - want).abs() / size);
                    worst.1 = worst.1.max((fast[at] - reference[at]).abs() / size);
                }
            }
            assert!(
                worst.0 < 1e-4,
                "{dtype:?}: reference vs f32 dot {}",
                worst.0
            );
            assert!(worst.1 < 1e-6, "{dtype:?}: kernel vs reference {}", worst.1);
        }
    }

    /// A row's outputs are the same bits whether it is multiplied alone or beside others (the
    /// server's batches rely on it), for every count of rows the kernel takes at once.
    #[test]
    fn each_row_is_the_same_alone_or_in_a_batch() {
        let (n, k, m) = (32, 128, 7);
        let x = random_rows(m, k);
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (format, data) = quantized(dtype, n, k);
            let w = interleave(format, &data, n, k).unwrap();
            let together = matmul(&w, &x, m);
            for r in 0..m {
                let alone = matmul(&w, &x[r * k..(r + 1) * k], 1);
                assert_eq!(
                    &together[r * n..(r + 1) * n],
                    &alone[..],
                    "{dtype:?} row {r}"
                );
            }
        }
    }

    #[test]
    fn shapes_without_whole_groups_are_left_to_the_row_kernel() {
        assert!(interleave(Format::Q4_1, &[0u8; 20 * 8], 8, 32).is_none());
        assert!(!supports(Format::Q5_0, 16, 32));
        assert!(supports(Format::Q8_0, 32, 64));
    }

    #[test]
    fn zero_activations_round_to_zero() {
        let a = round_activations(Format::Q4_1, &[0f32; 32]);
        assert_eq!(a.scales, vec![0.0]);
        assert!(a.pairs.iter().all(|&p| p == 0));
    }
}
