//! The nine formats ggml quantizes differently given an importance matrix, byte for byte as its
//! `quantize_row_*_impl` in `ggml-quants.c` (what llama-quantize runs when given `--imatrix`):
//! one function per format (the four 32-weight formats share one), each a transcription of the
//! reference in its f32 operation order. The packing, and the K-quants' final "codes from the
//! stored scales" step, are the reference quantizers' own ([`super::quantize`],
//! [`super::kquants`], [`super::kquants_low_bit`]).
//!
//! Each weight's fit weight is its column's importance `qw` times `sqrt(σ² + x²)`, with σ² the
//! mean square of the whole row (Q4_0 … Q5_1), of the super-block (Q2_K) or twice that (Q3_K,
//! Q4_K, Q5_K); Q6_K uses `qw` alone. The searches:
//!
//! | type | block or sub-block fit | sub-block scales (and mins) stored by |
//! |---|---|---|
//! | Q4_0, Q5_0 | [`make_qx_quants_weighted`] (codes −8..7, −16..15) | f16 per block of 32 |
//! | Q4_1, Q5_1 | [`qkx3`] (codes 0..=15, 0..=31, and a min) | f16 d and m per block of 32 |
//! | Q2_K | [`qkx3`] (codes 0..=3) | [`make_qp_quants`] (4 bits), weighted by each sub-block's Σ weight |
//! | Q3_K | [`make_qx_quants_weighted`] (codes −4..3) | [`make_qx_quants_weighted`] (6 bits, signed), weighted by Σ weight |
//! | Q4_K, Q5_K | [`qkx3`] (codes 0..=15, 0..=31) | [`make_qp_quants`] (6 bits), weighted by Σ weight |
//! | Q6_K | [`make_qx_quants_weighted`] (codes −32..31, weights `qw`) | as the reference: i8 against the largest |
//!
//! Everything works on fixed-size stack arrays: nothing is allocated per super-block.

use half::f16;

use super::blocks::{Format, BLOCK};
use super::kquant_search::{make_qp_quants, make_qx_quants_weighted, qkx3};
use super::kquants::{pack_scales_mins, push_q4_k, push_q5_k, push_q6_k, requantize_k4, QK_K};
use super::kquants_low_bit::{pack_q3_scales, push_q2_k, push_q3_k};
use super::quantize::{pack_high_bits, pack_nibbles, push_f16};

/// One row of Q4_0, Q4_1, Q5_0 or Q5_1 with the importance `qw` of its columns
/// (`quantize_row_q4_0_impl` … `quantize_row_q5_1_impl`): each block of 32 fitted with weights
/// `qw·sqrt(σ² + x²)`, σ² the mean square of the whole row. (Q8_0 has no such path: ggml
/// ignores the importance there, and so does [`super::weighted::quantize_weighted`].)
pub(crate) fn blocks_32(format: Format, x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    let sum_x2 = x.iter().fold(0f32, |a, v| a + v * v);
    let sigma2 = sum_x2 / x.len() as f32;
    let mut weights = [0f32; BLOCK];
    for (xb, qb) in x.chunks_exact(BLOCK).zip(qw.chunks_exact(BLOCK)) {
        for ((w, &v), &q) in weights.iter_mut().zip(xb).zip(qb) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let mut codes = [0u8; BLOCK];
        match format {
            // Symmetric: codes −nmax..nmax−1 stored as code + nmax.
            Format::Q4_0 | Format::Q5_0 => {
                let nmax = if format == Format::Q4_0 { 8 } else { 16 };
                let mut l = [0i8; BLOCK];
                let d = make_qx_quants_weighted(nmax, xb, &weights, &mut l);
                codes = l.map(|q| q as u8);
                push_f16(out, d);
            }
            // Asymmetric: codes 0..=nmax, x ≈ d·q + m with m ≤ 0.
            Format::Q4_1 | Format::Q5_1 => {
                let nmax = if format == Format::Q4_1 { 15 } else { 31 };
                let (d, minus_m) = qkx3(nmax).search(xb, &weights, &mut codes);
                push_f16(out, d);
                push_f16(out, -minus_m);
            }
            Format::Q8_0 => unreachable!("Q8_0 is quantized without importance"),
        }
        if matches!(format, Format::Q5_0 | Format::Q5_1) {
            pack_high_bits(&codes, out);
        }
        pack_nibbles(&codes, out);
    }
}

/// Σ x² over a super-block, summed in order.
fn sum_squares(xb: &[f32]) -> f32 {
    xb.iter().fold(0.0, |a, v| a + v * v)
}

/// Fit weights `qw·sqrt(σ² + x²)` of one sub-block into `weights`; returns their sum (summed in
/// order from 0, as ggml's `sw[j]`).
fn fit_weights(xs: &[f32], qw: &[f32], sigma2: f32, weights: &mut [f32]) -> f32 {
    let mut sum = 0f32;
    for ((w, &x), &q) in weights.iter_mut().zip(xs).zip(qw) {
        *w = q * (sigma2 + x * x).sqrt();
    }
    for &w in weights.iter() {
        sum += w;
    }
    sum
}

/// One row in Q2_K with the importance `qw` of its columns (`quantize_row_q2_K_impl`).
pub(crate) fn q2_k(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    for (xb, qb) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)) {
        let sigma2 = sum_squares(xb) / QK_K as f32;
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let mut weights = [0f32; 16];
        for j in 0..16 {
            let (xs, ls) = (&xb[16 * j..16 * (j + 1)], &mut l[16 * j..16 * (j + 1)]);
            sw[j] = fit_weights(xs, &qb[16 * j..16 * (j + 1)], sigma2, &mut weights);
            (scales[j], mins[j]) = qkx3(3).search(xs, &weights, ls);
        }
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let d = f16::from_f32(make_qp_quants(15, &scales, &mut ls, &sw));
        let dmin = f16::from_f32(make_qp_quants(15, &mins, &mut lm, &sw));
        let mut sc = [0u8; 16];
        for j in 0..16 {
            sc[j] = ls[j] | (lm[j] << 4);
        }
        push_q2_k(xb, &sc, d, dmin, &mut l, out);
    }
}

/// One row in Q3_K with the importance `qw` of its columns (`quantize_row_q3_K_impl`).
pub(crate) fn q3_k(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    for (xb, qb) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)) {
        let sigma2 = 2.0 * sum_squares(xb) / QK_K as f32;
        let mut l = [0i8; QK_K];
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        let mut weights = [0f32; 16];
        for j in 0..16 {
            let (xs, ls) = (&xb[16 * j..16 * (j + 1)], &mut l[16 * j..16 * (j + 1)]);
            sw[j] = fit_weights(xs, &qb[16 * j..16 * (j + 1)], sigma2, &mut weights);
            scales[j] = make_qx_quants_weighted(4, xs, &weights, ls);
        }
        // The 16 scales themselves as codes 0..63 (−32..31 + 32) of one f16 scale.
        let mut stored = [0i8; 16];
        let d = f16::from_f32(make_qx_quants_weighted(32, &scales, &sw, &mut stored));
        push_q3_k(
            xb,
            &pack_q3_scales(&stored.map(|s| s as u8)),
            d,
            &mut l,
            out,
        );
    }
}

/// Q4_K's and Q5_K's shared part: each sub-block of 32 fitted by [`qkx3`] (codes 0..=nmax), the
/// 8 scales and 8 mins stored as 6-bit codes by [`make_qp_quants`] (clamped to 63 first when
/// `clamp_63`, as Q5_K does and Q4_K does not), and the codes recomputed from them.
fn q4_k_q5_k_block(
    xb: &[f32],
    qb: &[f32],
    nmax: i32,
    clamp_63: bool,
    l: &mut [u8; QK_K],
) -> (f16, f16, [u8; 12]) {
    let sigma2 = 2.0 * sum_squares(xb) / QK_K as f32;
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let (xs, ls) = (&xb[32 * j..32 * (j + 1)], &mut l[32 * j..32 * (j + 1)]);
        sw[j] = fit_weights(xs, &qb[32 * j..32 * (j + 1)], sigma2, &mut weights);
        (scales[j], mins[j]) = qkx3(nmax).search(xs, &weights, ls);
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp_63 {
        ls = ls.map(|v| v.min(63));
        lm = lm.map(|v| v.min(63));
    }
    let packed = pack_scales_mins(&ls, &lm);
    let (d, dmin) = (f16::from_f32(d_block), f16::from_f32(m_block));
    requantize_k4(xb, d, dmin, &packed, nmax, l);
    (d, dmin, packed)
}

/// One row in Q4_K with the importance `qw` of its columns (`quantize_row_q4_K_impl`).
pub(crate) fn q4_k(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    for (xb, qb) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let (d, dmin, packed) = q4_k_q5_k_block(xb, qb, 15, false, &mut l);
        push_q4_k(d, dmin, &packed, &l, out);
    }
}

/// One row in Q5_K with the importance `qw` of its columns (`quantize_row_q5_K_impl`).
pub(crate) fn q5_k(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    for (xb, qb) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let (d, dmin, packed) = q4_k_q5_k_block(xb, qb, 31, true, &mut l);
        push_q5_k(d, dmin, &packed, &l, out);
    }
}

/// One row in Q6_K with the importance `qw` of its columns (`quantize_row_q6_K_impl`: the
/// sub-block search weighted by `qw` itself; ggml's σ² weights are commented out there).
pub(crate) fn q6_k(x: &[f32], qw: &[f32], out: &mut Vec<u8>) {
    for (xb, qb) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        for (ib, scale) in scales.iter_mut().enumerate() {
            let r = 16 * ib..16 * (ib + 1);
            *scale = make_qx_quants_weighted(32, &xb[r.clone()], &qb[r.clone()], &mut l[r]);
        }
        push_q6_k(xb, &scales, &mut l, out);
    }
}
