//! The low-bit K-quant formats Q2_K and Q3_K: quantizing f32 rows (lengths a multiple of 256)
//! byte for byte as ggml's reference quantizers (`quantize_row_q2_K_ref`,
//! `quantize_row_q3_K_ref` in `ggml-quants.c`, what llama-quantize runs without an importance
//! matrix), and dequantizing (`dequantize_row_q2_K`, `dequantize_row_q3_K`). Both cut the
//! super-block into 16 sub-blocks of 16 and store 2 bits of each code in `qs` the same way; they
//! differ in how a sub-block is fitted and how its scale is stored.
//!
//! | type | super-block of 256 (in file order) | weight w (sub-block j = w/16) |
//! |---|---|---|
//! | Q2_K | 16 bytes scales (low nibble: scale, high: min), 64 bytes qs, f16 d, f16 dmin | d·sc_j·q − dmin·m_j, q in 0..=3 |
//! | Q3_K | 32 bytes hmask, 64 bytes qs, 12 bytes of 6-bit scales, f16 d | d·(sc_j − 32)·(q − 4), q in 0..=7 |
//!
//! Where the bits of weight w = 128n + 32k + t (n < 2, k < 4, t < 32) live: its low 2 bits are
//! bits 2k..2k+1 of `qs[32n + t]`; Q3_K's third bit is bit w/32 of `hmask[t]`. Q3_K's 6-bit
//! scale j has its low nibble in `scales[j]` (j < 8) or the high nibble of `scales[j − 8]`, and
//! its top 2 bits at bits 2·(j/4) of `scales[8 + j%4]`.
//!
//! Q2_K fits each sub-block as Q4_K does, with `make_qkx2_quants` (codes 0..=3, weights |x|,
//! scored by weighted absolute error); Q3_K with `make_q3_quants` (symmetric codes −4..=3, x²
//! weights, codes moved one at a time). Sub-block scales (and Q2_K's mins) are then quantized to
//! 4 (Q2_K) or 6 (Q3_K) bits against the largest, and the codes recomputed from the stored
//! scales, except in a sub-block whose stored scale is 0, which keeps the search's codes.

use half::f16;

use super::blocks::f16_at;
use super::kquant_search::{make_q3_quants, nearest_int, Qkx2};
use super::kquants::{check_len, QK_K};
use crate::error::Result;

/// Q2_K's sub-block search: codes 0..=3, candidates (3 − 0.5 + 0.1k)/(max − min), k = 0..=15,
/// scored by weighted absolute error.
const Q2_K_SEARCH: Qkx2 = Qkx2 {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

/// Bytes per super-block.
const Q2_K_BYTES: usize = 84;
const Q3_K_BYTES: usize = 110;

/// The 64 `qs` bytes of 2-bit codes (the low 2 bits of each of `l`'s 256).
fn pack_2bit(l: &[u8; QK_K]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for n in 0..2 {
        let c = &l[128 * n..128 * (n + 1)];
        for t in 0..32 {
            qs[32 * n + t] = c[t] | (c[t + 32] << 2) | (c[t + 64] << 4) | (c[t + 96] << 6);
        }
    }
    qs
}

/// Weight w's 2-bit code from `qs`.
fn code_2bit(qs: &[u8], w: usize) -> u8 {
    let (n, k, t) = (w / 128, (w % 128) / 32, w % 32);
    (qs[32 * n + t] >> (2 * k)) & 3
}

/// One row in Q2_K (84 bytes per 256 weights).
pub fn quantize_row_q2_k(x: &[f32]) -> Result<Vec<u8>> {
    check_len(x, "Q2_K")?;
    let mut out = Vec::with_capacity(x.len() / QK_K * Q2_K_BYTES);
    for xb in x.chunks_exact(QK_K) {
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        // Mins are subtracted, so scales come out non-negative.
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        let mut weights = [0f32; 16];
        for j in 0..16 {
            let xs = &xb[16 * j..16 * (j + 1)];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (scale, min) = Q2_K_SEARCH.search(xs, &weights, &mut l[16 * j..16 * (j + 1)]);
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }
        // 4-bit scale in the low nibble, 4-bit min in the high (truncated to a byte as ggml's
        // `uint8_t` stores do).
        let mut sc = [0u8; 16];
        let mut d = f16::ZERO;
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            d = f16::from_f32(max_scale / 15.0);
        }
        let mut dmin = f16::ZERO;
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for j in 0..16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            dmin = f16::from_f32(max_min / 15.0);
        }
        push_q2_k(xb, &sc, d, dmin, &mut l, &mut out);
    }
    Ok(out)
}

/// The rest of a Q2_K super-block once its scales and mins are stored in `sc` (low nibble: scale,
/// high: min; of d and dmin): the codes 0..=3 recomputed from them (a sub-block whose stored
/// scale is 0 keeps `l`'s), and the 84 bytes pushed.
pub(crate) fn push_q2_k(
    xb: &[f32],
    sc: &[u8; 16],
    d: f16,
    dmin: f16,
    l: &mut [u8; QK_K],
    out: &mut Vec<u8>,
) {
    for (j, &s) in sc.iter().enumerate() {
        let dj = d.to_f32() * (s & 0xf) as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * (s >> 4) as f32;
        for i in 16 * j..16 * (j + 1) {
            l[i] = nearest_int((xb[i] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    out.extend_from_slice(sc);
    out.extend_from_slice(&pack_2bit(l));
    out.extend_from_slice(&d.to_bits().to_le_bytes());
    out.extend_from_slice(&dmin.to_bits().to_le_bytes());
}

/// Q2_K blocks back to f32 (`dequantize_row_q2_K`).
pub fn dequantize_row_q2_k(b: &[u8]) -> Vec<f32> {
    let mut y = Vec::with_capacity(b.len() / Q2_K_BYTES * QK_K);
    for blk in b.chunks_exact(Q2_K_BYTES) {
        let (sc, qs) = (&blk[..16], &blk[16..80]);
        let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
        for (j, &s) in sc.iter().enumerate() {
            let (dl, ml) = (d * (s & 0xf) as f32, dmin * (s >> 4) as f32);
            y.extend((16 * j..16 * (j + 1)).map(|w| dl * code_2bit(qs, w) as f32 - ml));
        }
    }
    y
}

/// Q3_K's 6-bit scale j from its 12 packed bytes, less its offset 32.
fn q3_scale(j: usize, packed: &[u8]) -> i32 {
    let low = if j < 8 {
        packed[j] & 0xf
    } else {
        packed[j - 8] >> 4
    };
    let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// One row in Q3_K (110 bytes per 256 weights).
pub fn quantize_row_q3_k(x: &[f32]) -> Result<Vec<u8>> {
    check_len(x, "Q3_K")?;
    let mut out = Vec::with_capacity(x.len() / QK_K * Q3_K_BYTES);
    for xb in x.chunks_exact(QK_K) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        // The scale of largest magnitude, sign kept.
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &xb[16 * j..16 * (j + 1)], &mut l[16 * j..16 * (j + 1)]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        let mut stored = [0u8; 16];
        let mut d = f16::ZERO;
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                stored[j] = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
            }
            d = f16::from_f32(1.0 / iscale);
        }
        push_q3_k(xb, &pack_q3_scales(&stored), d, &mut l, &mut out);
    }
    Ok(out)
}

/// Q3_K's 12 bytes of 6-bit scales (stored with their offset 32): scale j's low nibble in byte j
/// (j < 8) or the high nibble of byte j − 8, its top two bits at bits 2·(j/4) of byte 8 + j%4.
pub(crate) fn pack_q3_scales(stored: &[u8; 16]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for (j, &q) in stored.iter().enumerate() {
        if j < 8 {
            packed[j] = q & 0xf;
        } else {
            packed[j - 8] |= (q & 0xf) << 4;
        }
        packed[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
    }
    packed
}

/// The rest of a Q3_K super-block once its scales are packed: the codes −4..3 recomputed from
/// d·(sc − 32) (into `l` as code + 4; a sub-block whose stored scale is 0 keeps `l`'s), and the
/// 110 bytes pushed.
pub(crate) fn push_q3_k(
    xb: &[f32],
    packed: &[u8; 12],
    d: f16,
    l: &mut [i8; QK_K],
    out: &mut Vec<u8>,
) {
    for j in 0..16 {
        let dj = d.to_f32() * q3_scale(j, packed) as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 16 * j..16 * (j + 1) {
            l[i] = (nearest_int(xb[i] / dj).clamp(-4, 3) + 4) as i8;
        }
    }
    // The third bit of each code to hmask, the low two to qs.
    let mut hmask = [0u8; 32];
    let mut low = [0u8; QK_K];
    for (w, &q) in l.iter().enumerate() {
        let q = q as u8;
        if q > 3 {
            hmask[w % 32] |= 1 << (w / 32);
        }
        low[w] = q & 3;
    }
    out.extend_from_slice(&hmask);
    out.extend_from_slice(&pack_2bit(&low));
    out.extend_from_slice(packed);
    out.extend_from_slice(&d.to_bits().to_le_bytes());
}

/// Q3_K blocks back to f32 (`dequantize_row_q3_K`).
pub fn dequantize_row_q3_k(b: &[u8]) -> Vec<f32> {
    let mut y = Vec::with_capacity(b.len() / Q3_K_BYTES * QK_K);
    for blk in b.chunks_exact(Q3_K_BYTES) {
        let (hmask, qs, packed) = (&blk[..32], &blk[32..96], &blk[96..108]);
        let d = f16_at(blk, 108);
        for j in 0..16 {
            let dl = d * q3_scale(j, packed) as f32;
            y.extend((16 * j..16 * (j + 1)).map(|w| {
                let high = (hmask[w % 32] >> (w / 32)) & 1;
                let q = code_2bit(qs, w) as i32 + 4 * high as i32 - 4;
                dl * q as f32
            }));
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the bits of weight w go (the module's table): a code of w's own index pattern
    /// survives pack and unpack.
    #[test]
    fn two_bit_codes_unpack_where_they_were_packed() {
        let mut l = [0u8; QK_K];
        for (w, q) in l.iter_mut().enumerate() {
            *q = ((w * 7 + w / 5) % 4) as u8;
        }
        let qs = pack_2bit(&l);
        for (w, &q) in l.iter().enumerate() {
            assert_eq!(code_2bit(&qs, w), q, "weight {w}");
        }
    }

    #[test]
    fn all_zero_rows_are_all_zero_blocks() {
        let x = [0f32; 512];
        assert_eq!(quantize_row_q2_k(&x).unwrap(), vec![0u8; 2 * Q2_K_BYTES]);
        let q3 = quantize_row_q3_k(&x).unwrap();
        assert_eq!(dequantize_row_q3_k(&q3), x.to_vec());
    }
}
