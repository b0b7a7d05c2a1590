//! The K-quant formats Q4_K and Q6_K: quantizing f32 rows (lengths a multiple of 256) byte for
//! byte as ggml's reference quantizers (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref` in
//! `ggml-quants.c`, which llama-quantize runs without an importance matrix), and dequantizing.
//! A readable transcription: the same searches, in the same f32 operation order.
//!
//! | type | super-block of 256 | weight |
//! |---|---|---|
//! | Q4_K | f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) × 8, 128 bytes of 4-bit codes | d·sc_j·q − dmin·m_j, 8 sub-blocks of 32 |
//! | Q6_K | 128 bytes low nibbles, 64 bytes high 2 bits, 16 i8 scales, f16 d | d·sc_j·(q − 32), 16 sub-blocks of 16 |
//!
//! Q4_K picks each sub-block's (scale, min) by a weighted least-squares search over 21 candidate
//! scales (`make_qkx2_quants`), Q6_K each sub-block's scale by a search over 19 around 32/max
//! (`make_qx_quants`); the super-block then stores the scales themselves quantized, and the codes
//! are recomputed from the stored scales.
//!
//! candle's own Q4_K/Q6_K quantizers are not these: on the 16 fixture rows of tests/quant.rs,
//! 14 (Q4_K) and 15 (Q6_K) came out different from llama-quantize's bytes (measured 2026-11-28,
//! candle 0.11.1), so tunelab quantizes K-quants here.

use half::f16;

use crate::error::{Error, Result};

/// Weights per super-block.
pub const QK_K: usize = 256;
/// ggml's threshold below which a group counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the 1.5·2²³ trick (|x| < 2²²).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Weighted search for the (scale, −min) of codes 0..=nmax (`make_qkx2_quants`); fills `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = vec![0u8; n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let w = weights[i];
            let q = q as f32;
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(&aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric search for the scale of codes −nmax..nmax−1 weighted by x² (`make_qx_quants`,
/// rmse_type 1); fills `l` with code + nmax.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (code(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (code(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn check_len(x: &[f32], name: &str) -> Result<()> {
    if x.is_empty() || !x.len().is_multiple_of(QK_K) {
        return Err(Error::msg(format!(
            "cannot quantize a row of {} values to {name}: its super-blocks hold {QK_K}; the row length must be a multiple of {QK_K} (llama-quantize falls back to a 32-element type then)",
            x.len()
        )));
    }
    Ok(())
}

/// One row in Q4_K (144 bytes per 256 weights).
pub fn quantize_row_q4_k(x: &[f32]) -> Result<Vec<u8>> {
    check_len(x, "Q4_K")?;
    let mut out = Vec::with_capacity(x.len() / QK_K * 144);
    for xb in x.chunks_exact(QK_K) {
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let xs = &xb[32 * j..32 * (j + 1)];
            let sum_x2: f32 = xs.iter().fold(0.0, |a, v| a + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            let weights: Vec<f32> = xs.iter().map(|v| av_x + v.abs()).collect();
            let (scale, min) = make_qkx2_quants(
                15,
                xs,
                &weights,
                &mut l[32 * j..32 * (j + 1)],
                -1.0,
                0.1,
                20,
            );
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
        let mut packed = [0u8; 12];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
                packed[j - 4] |= (ls >> 4) << 6;
                packed[j] |= (lm >> 4) << 6;
            }
        }
        let d = f16::from_f32(max_scale / 63.0);
        let dmin = f16::from_f32(max_min / 63.0);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &packed);
            let dj = d.to_f32() * sc as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * m as f32;
            for i in 0..32 {
                l[32 * j + i] = nearest_int((xb[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
            }
        }
        out.extend_from_slice(&d.to_bits().to_le_bytes());
        out.extend_from_slice(&dmin.to_bits().to_le_bytes());
        out.extend_from_slice(&packed);
        for chunk in l.chunks_exact(64) {
            for i in 0..32 {
                out.push(chunk[i] | (chunk[i + 32] << 4));
            }
        }
    }
    Ok(out)
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
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let scale = make_qx_quants(
                32,
                &xb[16 * ib..16 * (ib + 1)],
                &mut l[16 * ib..16 * (ib + 1)],
            );
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            out.extend(std::iter::repeat_n(0u8, 210));
            continue;
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
    Ok(out)
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
    fn nearest_int_rounds_half_to_even() {
        for (x, n) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-7.6, -8),
        ] {
            assert_eq!(nearest_int(x), n, "{x}");
        }
    }

    #[test]
    fn rows_of_whole_super_blocks_only() {
        let err = quantize_row_q4_k(&[0.0; 576]).unwrap_err().to_string();
        assert!(
            err.contains("576") && err.contains("multiple of 256"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_stay_close() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
            .collect();
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (q, deq, tol) in [
            (
                quantize_row_q4_k(&x).unwrap(),
                dequantize_row_q4_k as fn(&[u8]) -> Vec<f32>,
                0.1,
            ),
            (quantize_row_q6_k(&x).unwrap(), dequantize_row_q6_k, 0.03),
        ] {
            let y = deq(&q);
            let worst = x
                .iter()
                .zip(&y)
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(worst <= tol * amax, "worst error {worst} of {amax}");
        }
    }
}
