//! The searches behind ggml's K-quant reference quantizers (`ggml-quants.c`): for one sub-block
//! of 16 or 32 weights, the scale (and for the asymmetric formats the min) that fits its codes
//! best, with the codes it implies. Transcribed for reading, in the reference's f32 operation
//! order, because one ulp in a scale can flip a code and the bytes would differ from
//! llama-quantize's.
//!
//! | search | used by | codes | fit |
//! |---|---|---|---|
//! | [`Qkx2::search`] (`make_qkx2_quants`) | Q2_K, Q4_K, Q5_K | 0..=nmax, x ≈ scale·q − min | weighted least squares (or least absolute error) over candidate scales `(nmax + rmin + rdelta·k)/(max − min)` |
//! | [`make_qx_quants`] (rmse_type 1) | Q6_K | −nmax..nmax−1, x ≈ scale·q | least squares weighted by x², 19 candidates `(nmax ± 0.1k)/max` |
//! | [`make_q3_quants`] (do_rmse) | Q3_K | −nmax..nmax−1, x ≈ scale·q | least squares weighted by x², codes moved one at a time (5 sweeps) |
//!
//! With an importance matrix ggml runs other searches (`quantize_*_impl`, see [`super::weighted`]):
//!
//! | search | used by | fit |
//! |---|---|---|
//! | [`make_qx_quants_weighted`] (`make_qx_quants` given `qw`) | Q4_0, Q5_0, Q3_K, Q6_K | as `make_qx_quants`, weighted by the caller's weights instead of x² |
//! | [`qkx3`] (`make_qkx3_quants` given weights) | Q4_1, Q5_1, Q2_K, Q4_K, Q5_K | [`Qkx2::search`] over 37 candidates `(nmax − 0.9 + 0.05k)/(max − min)` |
//! | [`make_qp_quants`] | the sub-block scales and mins of Q2_K, Q4_K, Q5_K | codes 0..=nmax of non-negative values, x ≈ scale·q: 9 candidate scales, then codes moved one at a time (5 sweeps) |

/// ggml's threshold below which a group counts as all zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// The most weights a search is given at once (a Q4_0…Q5_1 block, a Q4_K/Q5_K sub-block).
const MAX_GROUP: usize = 32;

/// ggml's `nearest_int`: round half to even through the 1.5·2²³ trick (|x| < 2²²).
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The settings of one `make_qkx2_quants` search (asymmetric codes 0..=nmax).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Qkx2 {
    /// Largest code.
    pub nmax: i32,
    /// First candidate's offset from nmax (the candidates are `nmax + rmin + rdelta·k`).
    pub rmin: f32,
    /// Step between candidates.
    pub rdelta: f32,
    /// Candidates after the first (k = 0..=nstep).
    pub nstep: i32,
    /// Score by weighted absolute error instead of weighted squared error.
    pub use_mad: bool,
}

impl Qkx2 {
    /// Weighted search for the (scale, −min) of `x`'s codes (at most 32); fills `l` with the
    /// codes.
    pub fn search(&self, x: &[f32], weights: &[f32], l: &mut [u8]) -> (f32, f32) {
        let nmax = self.nmax;
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
        let error = |d: f32| if self.use_mad { d.abs() } else { d * d };
        let mut iscale = nmax as f32 / (max - min);
        let mut scale = 1.0 / iscale;
        let mut best_error = 0f32;
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l[i] = q as u8;
            let diff = scale * l[i] as f32 + min - x[i];
            best_error += weights[i] * error(diff);
        }
        if self.nstep < 1 {
            return (scale, -min);
        }
        // Sub-blocks hold 16 or 32 weights: the candidate's codes live on the stack.
        let mut aux_buf = [0u8; MAX_GROUP];
        let aux = &mut aux_buf[..n];
        for is in 0..=self.nstep {
            iscale = (self.rmin + self.rdelta * is as f32 + nmax as f32) / (max - min);
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
                    cur_error += weights[i] * error(diff);
                }
                if cur_error < best_error {
                    l.copy_from_slice(aux);
                    best_error = cur_error;
                    scale = this_scale;
                    min = this_min;
                }
            }
        }
        (scale, -min)
    }
}

/// ggml's `make_qkx3_quants` (given weights, as every imatrix path gives them) with codes
/// 0..=nmax: 37 candidates `(nmax − 0.9 + 0.05k)/(max − min)`, k = 0..=36, scored by weighted
/// squared error. Its steps are `make_qkx2_quants`'s line for line (it tests `max <= min` where
/// that tests `max == min`, the same once min is clamped to ≤ 0), so it is that search with these
/// settings.
pub(crate) const fn qkx3(nmax: i32) -> Qkx2 {
    Qkx2 {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    }
}

/// The value of largest magnitude, sign kept (the first on ties), or None when the group is all
/// (near) zero — the start of both symmetric searches.
fn signed_absmax(x: &[f32]) -> Option<f32> {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax >= GROUP_MAX_EPS).then_some(max)
}

/// Symmetric search for the scale of codes −nmax..nmax−1 weighted by x² (`make_qx_quants`,
/// rmse_type 1, no `qw`: what the reference quantizers run); fills `l` with code + nmax.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let mut squares = [0f32; MAX_GROUP];
    let squares = &mut squares[..x.len()];
    for (w, &v) in squares.iter_mut().zip(x) {
        *w = v * v;
    }
    make_qx_quants_weighted(nmax, x, squares, l)
}

/// `make_qx_quants` (rmse_type 1) given the weights `qw` (at most 32 values): the scale of codes
/// −nmax..nmax−1 that best fits `x` in Σ qw·(x − scale·q)², over 19 candidates; fills `l` with
/// code + nmax.
pub(crate) fn make_qx_quants_weighted(nmax: i32, x: &[f32], qw: &[f32], l: &mut [i8]) -> f32 {
    let Some(max) = signed_absmax(x) else {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    };
    // ggml tries −nmax/max, then −(nmax + 0.1·is)/max for is = −9..9 (not 0), in that order.
    // Candidates are independent, so their sums are computed side by side (one lane each, each
    // summed in ggml's order: the same bits) and the choice is made afterwards, in order.
    let mut iscales = [-(nmax as f32) / max; QX_LANES];
    for (k, is) in (-9..=9).filter(|&is| is != 0).enumerate() {
        iscales[k + 1] = -(nmax as f32 + 0.1 * is as f32) / max;
    }
    let (sumlx, suml2) = qx_sums(nmax, &iscales, x, qw);
    let mut chosen = 0;
    let mut scale = if suml2[0] != 0.0 {
        sumlx[0] / suml2[0]
    } else {
        0.0
    };
    let mut best = scale * sumlx[0];
    for c in 1..QX_CANDIDATES {
        if suml2[c] > 0.0 && sumlx[c] * sumlx[c] > best * suml2[c] {
            chosen = c;
            scale = sumlx[c] / suml2[c];
            best = scale * sumlx[c];
        }
    }
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (nearest_int(iscales[chosen] * v).clamp(-nmax, nmax - 1) + nmax) as i8;
    }
    scale
}

/// Candidate scales of [`make_qx_quants`]: the first, then 18 more.
const QX_CANDIDATES: usize = 19;
/// Lanes the candidates are computed in (the padding repeats the first and is never chosen).
const QX_LANES: usize = 32;

/// Per candidate inverse scale: Σ w·x·q and Σ w·q² over `x`, with q its clamped code, each
/// summed in `x`'s order. Compiled for the widest vectors this CPU has (the lanes are
/// independent, so vectorizing changes no bit).
fn qx_sums(nmax: i32, iscales: &[f32; QX_LANES], x: &[f32], w: &[f32]) -> QxSums {
    #[cfg(target_arch = "x86_64")]
    {
        use super::matvec::{simd, Simd};
        // SAFETY: simd() reports only features this CPU has.
        match simd() {
            Simd::Avx512 => return unsafe { qx_sums_avx512(nmax, iscales, x, w) },
            Simd::Avx2 => return unsafe { qx_sums_avx2(nmax, iscales, x, w) },
            Simd::Portable => {}
        }
    }
    qx_sums_generic(nmax, iscales, x, w)
}

/// (Σ w·x·q, Σ w·q²) per candidate lane.
type QxSums = ([f32; QX_LANES], [f32; QX_LANES]);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn qx_sums_avx512(nmax: i32, iscales: &[f32; QX_LANES], x: &[f32], w: &[f32]) -> QxSums {
    qx_sums_generic(nmax, iscales, x, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn qx_sums_avx2(nmax: i32, iscales: &[f32; QX_LANES], x: &[f32], w: &[f32]) -> QxSums {
    qx_sums_generic(nmax, iscales, x, w)
}

#[inline(always)]
fn qx_sums_generic(nmax: i32, iscales: &[f32; QX_LANES], x: &[f32], w: &[f32]) -> QxSums {
    // The clamp in f32 equals the clamp of the i32 code: codes are integers below 2²³.
    let (lo, hi) = (-(nmax as f32), (nmax - 1) as f32);
    let mut sumlx = [0f32; QX_LANES];
    let mut suml2 = [0f32; QX_LANES];
    for (&v, &w) in x.iter().zip(w) {
        for c in 0..QX_LANES {
            let q = (nearest_int(iscales[c] * v) as f32).max(lo).min(hi);
            sumlx[c] += w * v * q;
            suml2[c] += w * q * q;
        }
    }
    (sumlx, suml2)
}

/// ggml's `make_qp_quants`: codes 0..=nmax for the non-negative `x` (a super-block's sub-block
/// scales, or its mins) and the scale that fits them best in Σ w·(x − scale·q)². Tries nmax/max
/// and (nmax + 0.1·is)/max for is = −4..4, keeps the one of least weighted error, then moves
/// codes one at a time (up to 5 sweeps) while (Σw·x·q)²/Σw·q² grows; returns Σw·x·q / Σw·q².
///
/// `l` holds bytes as ggml's `uint8_t L[]` does: a negative code (only from a negative `x`, which
/// the callers never pass) wraps, and the sweeps read the wrapped byte, as ggml's do.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], w: &[f32]) -> f32 {
    // ggml's MAX(max, x): the later value on ties.
    let max = x.iter().fold(0f32, |m, &v| if m > v { m } else { v });
    if max < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (l, &v) in l.iter_mut().zip(x) {
        *l = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..x.len() {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += w[i] * diff * diff;
    }
    for is in (-4..=4).filter(|&is| is != 0) {
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..x.len() {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += w[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..x.len() {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        sumlx += w[i] * x[i] * q as f32;
        suml2 += w[i] * q as f32 * q as f32;
    }
    for _sweep in 0..5 {
        let mut changed = 0;
        for i in 0..x.len() {
            let (wi, xi, old) = (w[i], x[i], l[i] as f32);
            let mut slx = sumlx - wi * xi * old;
            let mut sl2 = suml2 - wi * old * old;
            if slx > 0.0 && sl2 > 0.0 {
                let new = nearest_int(xi * sl2 / slx).min(nmax);
                if new != l[i] as i32 {
                    slx += wi * xi * new as f32;
                    sl2 += wi * new as f32 * new as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Symmetric search for the scale of codes −nmax..nmax−1 weighted by x² (`make_q3_quants` with
/// do_rmse, the only way Q3_K calls it): start from the codes of −nmax/max, then up to 5 sweeps
/// that move each code to its best value given the others, keeping a move when it raises
/// (Σw·x·q)²/Σw·q². Fills `l` with code + nmax (0 for an all-zero group); returns the
/// least-squares scale Σw·x·q / Σw·q².
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let Some(max) = signed_absmax(x) else {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    };
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (l, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *l = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _sweep in 0..5 {
        let mut changed = 0;
        for (l, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let old = *l as f32;
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new != *l as i32 {
                    slx += w * v * new as f32;
                    sl2 += w * new as f32 * new as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l = new as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for l in l.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
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

    /// Codes already on a grid are found exactly: x = 0.25·q for q in −4..3.
    #[test]
    fn make_q3_quants_recovers_a_grid() {
        let x: Vec<f32> = (0..16).map(|i| 0.25 * ((i % 8) as f32 - 4.0)).collect();
        let mut l = [0i8; 16];
        let scale = make_q3_quants(4, &x, &mut l);
        assert_eq!(scale, 0.25);
        for (q, v) in l.iter().zip(&x) {
            assert_eq!((*q as f32 - 4.0) * 0.25, *v);
        }
    }

    /// Scales already on a grid (0.5·q, q = 0..=15) are found exactly, whatever the weights.
    #[test]
    fn make_qp_quants_recovers_a_grid() {
        let x: Vec<f32> = (0..16).map(|q| 0.5 * q as f32).collect();
        let w: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 * 3.0).collect();
        let mut l = [0u8; 16];
        assert_eq!(make_qp_quants(15, &x, &mut l, &w), 0.5);
        assert_eq!(l.to_vec(), (0..16).collect::<Vec<u8>>());
        assert_eq!(make_qp_quants(15, &[0.0; 16], &mut l, &w), 0.0);
        assert_eq!(l, [0; 16]);
    }

    /// The weights decide the fit: a group whose weight is all on the values 1.0 fits them
    /// exactly, and the same group weighted by x² (the reference) does not.
    #[test]
    fn make_qx_quants_weighted_fits_where_the_weight_is() {
        let mut x = [1.0f32; 16];
        x[0] = 2.9;
        let mut w = [1.0f32; 16];
        w[0] = 0.0;
        let mut l = [0i8; 16];
        let scale = make_qx_quants_weighted(4, &x, &w, &mut l);
        assert!(
            (scale * (l[1] as f32 - 4.0) - 1.0).abs() < 1e-6,
            "{scale} {l:?}"
        );
        let reference = make_qx_quants(4, &x, &mut l);
        assert!(
            (reference * (l[1] as f32 - 4.0) - 1.0).abs() > 1e-3,
            "{reference} {l:?}"
        );
    }

    #[test]
    fn qkx2_of_a_constant_group_is_all_zero_codes() {
        let search = Qkx2 {
            nmax: 3,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: true,
        };
        let x = [-0.5f32; 16];
        let mut l = [9u8; 16];
        // max == min == −0.5: codes 0 and the min carries the value.
        assert_eq!(search.search(&x, &[0.5; 16], &mut l), (0.0, 0.5));
        assert_eq!(l, [0; 16]);
    }
}
