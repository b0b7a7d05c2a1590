//! The K-quant formats Q4_K, Q5_K and Q6_K: quantizing f32 rows (lengths a multiple of 256) byte
//! for byte as ggml's reference quantizers (`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`,
//! `quantize_row_q6_K_ref` in `ggml-quants.c`, which llama-quantize runs without an importance
//! matrix), and dequantizing. A readable transcription: the same searches
//! ([`super::kquant_search`]), in the same f32 operation order. Q2_K and Q3_K, with their own
//! scale packing, are in [`super::kquants_low_bit`].
//!
//! | type | super-block of 256 | weight |
//! |---|---|---|
//! | Q4_K | f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) × 8, 128 bytes of 4-bit codes | d·sc_j·q − dmin·m_j, 8 sub-blocks of 32 |
//! | Q5_K | f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) × 8, 32 bytes of high bits, 128 bytes of low nibbles | d·sc_j·q − dmin·m_j, 8 sub-blocks of 32 |
//! | Q6_K | 128 bytes low nibbles, 64 bytes high 2 bits, 16 i8 scales, f16 d | d·sc_j·(q − 32), 16 sub-blocks of 16 |
//!
//! Q4_K and Q5_K pick each sub-block's (scale, min) by a weighted least-squares search
//! (`make_qkx2_quants`: 21 candidate scales for Q4_K, 16 for Q5_K, weights `rms + |x|`), Q6_K each
//! sub-block's scale by a search over 19 around 32/max (`make_qx_quants`); the super-block then
//! stores the scales themselves quantized, and the codes are recomputed from the stored scales.
//!
//! candle's own Q4_K/Q6_K quantizers are not these: on the 16 fixture rows of tests/quant.rs,
//! 14 (Q4_K) and 15 (Q6_K) came out different from llama-quantize's bytes (measured 2026-11-28,
//! candle 0.11.1), so tunelab quantizes K-quants here.

use half::f16;

use super::kquant_search::{make_qx_quants, nearest_int, Qkx2, GROUP_MAX_EPS};
use crate::error::{Error, Result};

/// Weights per super-block.
pub const QK_K: usize = 256;

/// A reference quantizer of one row.
pub type RowQuantizer = fn(&[f32]) -> Result<Vec<u8>>;
/// A dequantizer of one row's blocks.
pub type RowDequantizer = fn(&[u8]) -> Vec<f32>;

/// The reference quantizer and dequantizer of the K-quant type called `name` (`Q2_K` … `Q6_K`).
pub fn k_quant(name: &str) -> Option<(RowQuantizer, RowDequantizer)> {
    use super::kquants_low_bit::*;
    Some(match name {
        "Q2_K" => (
            quantize_row_q2_k as RowQuantizer,
            dequantize_row_q2_k as RowDequantizer,
        ),
        "Q3_K" => (quantize_row_q3_k, dequantize_row_q3_k),
        "Q4_K" => (quantize_row_q4_k, dequantize_row_q4_k),
        "Q5_K" => (quantize_row_q5_k, dequantize_row_q5_k),
        "Q6_K" => (quantize_row_q6_k, dequantize_row_q6_k),
        _ => return None,
    })
}

/// Q4_K's sub-block search: codes 0..=15, candidates (15 − 1 + 0.1k)/(max − min), k = 0..=20.
const Q4_K_SEARCH: Qkx2 = Qkx2 {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};
/// Q5_K's: codes 0..=31, candidates (31 − 0.5 + 0.1k)/(max − min), k = 0..=15.
const Q5_K_SEARCH: Qkx2 = Qkx2 {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

pub(crate) fn check_len(x: &[f32], name: &str) -> Result<()> {
    if x.is_empty() || !x.len().is_multiple_of(QK_K) {
        return Err(Error::msg(format!(
            "cannot quantize a row of {} values to {name}: its super-blocks hold {QK_K}; the row length must be a multiple of {QK_K} (llama-quantize falls back to a 32-element type then)",
            x.len()
        )));
    }
    Ok(())
}

/// One super-block of Q4_K or Q5_K (their scales and mins are packed alike): each sub-block of
/// 32 searched with weights `rms + |x|`, the 8 scales and 8 mins quantized to 6 bits against the
/// largest of each, and the codes (0..=nmax, into `l`) recomputed from the stored values.
/// Returns (d, dmin, the 12 packed bytes).
fn scales_mins_and_codes(xb: &[f32], search: &Qkx2, l: &mut [u8; QK_K]) -> (f16, f16, [u8; 12]) {
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let xs = &xb[32 * j..32 * (j + 1)];
        let sum_x2: f32 = xs.iter().fold(0.0, |a, v| a + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = search.search(xs, &weights, &mut l[32 * j..32 * (j + 1)]);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scales_mins(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    requantize_k4(xb, d, dmin, &packed, search.nmax, l);
    (d, dmin, packed)
}

/// Q4_K's and Q5_K's 12 bytes of 6-bit sub-block scales `ls` and mins `lm` (the inverse of
/// [`scale_min_k4`]): j < 4 whole in bytes j and j + 4; j ≥ 4 as nibbles in byte j + 4 and top
/// two bits in bits 6..8 of bytes j − 4 and j. Bits above the sixth are dropped as ggml's
/// `uint8_t` stores drop them.
pub(crate) fn pack_scales_mins(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    packed
}

/// The codes 0..=nmax of a Q4_K/Q5_K super-block recomputed from its stored scales and mins
/// (x ≈ d·sc·q − dmin·m); a sub-block whose stored scale is 0 keeps the search's codes.
pub(crate) fn requantize_k4(
    xb: &[f32],
    d: f16,
    dmin: f16,
    packed: &[u8; 12],
    nmax: i32,
    l: &mut [u8; QK_K],
) {
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, packed);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((xb[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
}

/// One row in Q4_K (144 bytes per 256 weights).
pub fn quantize_row_q4_k(x: &[f32]) -> Result<Vec<u8>> {
    check_len(x, "Q4_K")?;
    let mut out = Vec::with_capacity(x.len() / QK_K * 144);
    for xb in x.chunks_exact(QK_K) {
        let mut l = [0u8; QK_K];
        let (d, dmin, packed) = scales_mins_and_codes(xb, &Q4_K_SEARCH, &mut l);
        push_q4_k(d, dmin, &packed, &l, &mut out);
    }
    Ok(out)
}

/// One Q4_K super-block's bytes: d, dmin, the packed scales, then per 64 weights 32 bytes whose
/// byte i holds weight i (low nibble) and weight i + 32 (high).
pub(crate) fn push_q4_k(d: f16, dmin: f16, packed: &[u8; 12], l: &[u8; QK_K], out: &mut Vec<u8>) {
    out.extend_from_slice(&d.to_bits().to_le_bytes());
    out.extend_from_slice(&dmin.to_bits().to_le_bytes());
    out.extend_from_slice(packed);
    for chunk in l.chunks_exact(64) {
        for i in 0..32 {
            out.push(chunk[i] | (chunk[i + 32] << 4));
        }
    }
}

/// One row in Q5_K (176 bytes per 256 weights).
pub fn quantize_row_q5_k(x: &[f32]) -> Result<Vec<u8>> {
    check_len(x, "Q5_K")?;
    let mut out = Vec::with_capacity(x.len() / QK_K * 176);
    for xb in x.chunks_exact(QK_K) {
        let mut l = [0u8; QK_K];
        let (d, dmin, packed) = scales_mins_and_codes(xb, &Q5_K_SEARCH, &mut l);
        push_q5_k(d, dmin, &packed, &l, &mut out);
    }
    Ok(out)
}

/// One Q5_K super-block's bytes. Each 64 weights c: low nibbles as Q4_K's; the fifth bit of
/// weight i goes to bit 2c of qh[i], that of weight i + 32 to bit 2c + 1.
pub(crate) fn push_q5_k(d: f16, dmin: f16, packed: &[u8; 12], l: &[u8; QK_K], out: &mut Vec<u8>) {
    let (mut qh, mut ql) = ([0u8; 32], [0u8; 128]);
    for (c, chunk) in l.chunks_exact(64).enumerate() {
        for i in 0..32 {
            let (lo, hi) = (chunk[i], chunk[i + 32]);
            qh[i] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
            ql[32 * c + i] = (lo & 0xf) | ((hi & 0xf) << 4);
        }
    }
    out.extend_from_slice(&d.to_bits().to_le_bytes());
    out.extend_from_slice(&dmin.to_bits().to_le_bytes());
    out.extend_from_slice(packed);
    out.extend_from_slice(&qh);
    out.extend_from_slice(&ql);
}

/// Sub-block j's 6-bit (scale, min) from Q4_K's 12 packed bytes (`get_scale_min_k4`).
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One row in Q6_K (210 bytes per 256 weights).
pub fn quantize_row_q6_k(x: &[f32]) -> Result<Vec<u8>> {
    check_len(x, "Q6_K")?;
    let mut out = Vec::with_capacity(x.len() / QK_K * 210);
    for xb in x.chunks_exact(QK_K) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        for ib in 0..16 {
            scales[ib] = make_qx_quants(
                32,
                &xb[16 * ib..16 * (ib + 1)],
                &mut l[16 * ib..16 * (ib + 1)],
            );
        }
        push_q6_k(xb, &scales, &mut l, &mut out);
    }
    Ok(out)
}

/// The rest of a Q6_K super-block once its 16 sub-block scales are searched: the scales stored
/// as i8 against the one of largest magnitude, the codes −32..31 recomputed from them (into `l`
/// as code + 32), and the 210 bytes pushed. A super-block whose scales are all (near) zero is
/// all zero bytes.
pub(crate) fn push_q6_k(xb: &[f32], scales: &[f32; 16], l: &mut [i8; QK_K], out: &mut Vec<u8>) {
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &scale in scales {
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.extend(std::iter::repeat_n(0u8, 210));
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    for j in 0..16 {
        let dj = d.to_f32() * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(xb[16 * j + i] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for (h, chunk) in l.chunks_exact(128).enumerate() {
        let q = |i: usize| chunk[i] as u8;
        for i in 0..32 {
            ql[64 * h + i] = (q(i) & 0xf) | ((q(i + 64) & 0xf) << 4);
            ql[64 * h + i + 32] = (q(i + 32) & 0xf) | ((q(i + 96) & 0xf) << 4);
            qh[32 * h + i] = (q(i) >> 4)
                | ((q(i + 32) >> 4) << 2)
                | ((q(i + 64) >> 4) << 4)
                | ((q(i + 96) >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&d.to_bits().to_le_bytes());
}

/// Q4_K blocks back to f32 (`dequantize_row_q4_K`).
pub fn dequantize_row_q4_k(b: &[u8]) -> Vec<f32> {
    let mut y = Vec::with_capacity(b.len() / 144 * QK_K);
    for blk in b.chunks_exact(144) {
        let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        let dmin = f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32();
        let scales = &blk[4..16];
        let qs = &blk[16..];
        for (c, q) in qs.chunks_exact(32).enumerate() {
            let (s1, m1) = scale_min_k4(2 * c, scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, scales);
            let (d1, min1) = (d * s1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * s2 as f32, dmin * m2 as f32);
            y.extend(q.iter().map(|&v| d1 * (v & 0xf) as f32 - min1));
            y.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - min2));
        }
    }
    y
}

/// Q5_K blocks back to f32 (`dequantize_row_q5_K`).
pub fn dequantize_row_q5_k(b: &[u8]) -> Vec<f32> {
    let mut y = Vec::with_capacity(b.len() / 176 * QK_K);
    for blk in b.chunks_exact(176) {
        let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        let dmin = f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32();
        let (scales, qh, ql) = (&blk[4..16], &blk[16..48], &blk[48..]);
        for (c, q) in ql.chunks_exact(32).enumerate() {
            let (s1, m1) = scale_min_k4(2 * c, scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, scales);
            let (d1, min1) = (d * s1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * s2 as f32, dmin * m2 as f32);
            let high = |i: usize, bit: usize| ((qh[i] >> bit) & 1) << 4;
            y.extend((0..32).map(|i| d1 * ((q[i] & 0xf) | high(i, 2 * c)) as f32 - min1));
            y.extend((0..32).map(|i| d2 * ((q[i] >> 4) | high(i, 2 * c + 1)) as f32 - min2));
        }
    }
    y
}

/// Q6_K blocks back to f32 (`dequantize_row_q6_K`).
pub fn dequantize_row_q6_k(b: &[u8]) -> Vec<f32> {
    let mut y = Vec::with_capacity(b.len() / 210 * QK_K);
    for blk in b.chunks_exact(210) {
        let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
        let d = f16::from_bits(u16::from_le_bytes([blk[208], blk[209]])).to_f32();
        let mut out = [0f32; QK_K];
        for h in 0..2 {
            for i in 0..32 {
                let is = 8 * h + i / 16;
                let lo = |k: usize| ql[64 * h + k];
                let hi = qh[32 * h + i];
                let q1 = ((lo(i) & 0xf) | ((hi & 3) << 4)) as i32 - 32;
                let q2 = ((lo(i + 32) & 0xf) | (((hi >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((lo(i) >> 4) | (((hi >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((lo(i + 32) >> 4) | (((hi >> 6) & 3) << 4)) as i32 - 32;
                let s = |k: usize| d * sc[is + k] as i8 as f32;
                out[128 * h + i] = s(0) * q1 as f32;
                out[128 * h + i + 32] = s(2) * q2 as f32;
                out[128 * h + i + 64] = s(4) * q3 as f32;
                out[128 * h + i + 96] = s(6) * q4 as f32;
            }
        }
        y.extend_from_slice(&out);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_whole_super_blocks_only() {
        let err = quantize_row_q4_k(&[0.0; 576]).unwrap_err().to_string();
        assert!(
            err.contains("576") && err.contains("multiple of 256"),
            "{err}"
        );
    }

    /// A smooth row comes back within a fraction of its largest magnitude in every K-quant
    /// (tests/quant.rs bounds the fixture rows per format).
    #[test]
    fn round_trips_stay_close() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
            .collect();
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (name, tol) in [
            ("Q2_K", 0.35),
            ("Q3_K", 0.25),
            ("Q4_K", 0.1),
            ("Q5_K", 0.05),
            ("Q6_K", 0.03),
        ] {
            let (quantize, dequantize) = k_quant(name).unwrap();
            let y = dequantize(&quantize(&x).unwrap());
            let worst = x
                .iter()
                .zip(&y)
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(worst <= tol * amax, "{name}: worst error {worst} of {amax}");
        }
    }
}
