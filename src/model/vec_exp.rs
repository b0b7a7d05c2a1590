//! e^x over slices of f32, many at a time: the softmaxes, the cross-entropy and SiLU of a
//! training step take hundreds of millions of exponentials, and the C library's `expf` is one
//! call per value, which the compiler cannot vectorize.
//!
//! [`exp`] is Cephes' `expf`: e^x = 2ⁿ · e^r with n = round(x / ln 2) and |r| ≤ ln 2 / 2, e^r by
//! a degree-6 polynomial (relative error below 2e-7 against `f32::exp`, tested). It is written
//! without branches or library calls, so a loop of it compiles to vector instructions; the slice
//! functions run it compiled for AVX-512 or AVX2 where the CPU has them (the same operations in
//! the same order, hence the same results on every CPU). Below −87.3 it returns 0 (−∞ too),
//! above 88 +∞, and NaN stays NaN.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts, so that n · ln 2 is subtracted exactly for every n used.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Rounds to the nearest integer by addition (1.5 · 2²³): exact for |v| < 2²².
const ROUND: f32 = 12_582_912.0;
/// Below this e^x is not a normal f32; the result is 0.
const MIN_X: f32 = -87.336_55;
/// Above this e^x overflows; the result is +∞.
const MAX_X: f32 = 88.0;

/// e^x.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let c = x.clamp(MIN_X, MAX_X);
    let n = (c * LOG2E + ROUND) - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let e = y * scale;
    if x < MIN_X {
        0.0
    } else if x > MAX_X {
        f32::INFINITY
    } else {
        e
    }
}

/// Runs `body` compiled for the widest vector instructions this CPU has (also used by
/// [`super::low_rank_add`]).
#[inline(always)]
pub(crate) fn dispatch<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the instructions the function is compiled for.
            return unsafe { wide(body) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { narrow(body) };
        }
    }
    body()
}

/// xs[i] ← e^(xs[i] − shift); returns their sum.
pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    dispatch(
        #[inline(always)]
        || {
            let mut lanes = [0f32; 16];
            let mut chunks = xs.chunks_exact_mut(16);
            for chunk in &mut chunks {
                for (lane, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
                    *x = exp(*x - shift);
                    *lane += *x;
                }
            }
            let mut sum: f32 = 0.0;
            for x in chunks.into_remainder() {
                *x = exp(*x - shift);
                sum += *x;
            }
            lanes.iter().sum::<f32>() + sum
        },
    )
}

/// Σ e^(xs[i] − shift), leaving `xs` as it is.
pub fn sum_exp_shifted(xs: &[f32], shift: f32) -> f32 {
    let mut buffer = [0f32; 1024];
    xs.chunks(1024)
        .map(|chunk| {
            let b = &mut buffer[..chunk.len()];
            b.copy_from_slice(chunk);
            exp_shifted_sum(b, shift)
        })
        .sum()
}

/// out[i] ← silu(g[i]) · u[i], where silu(g) = g / (1 + e^−g).
pub fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
    dispatch(
        #[inline(always)]
        || {
            for ((y, g), u) in out.iter_mut().zip(gate).zip(up) {
                *y = g / (1.0 + exp(-g)) * u;
            }
        },
    )
}

/// (d gate, d up) of silu(gate) · up for the output gradient `g`: g · up · silu'(gate) and
/// g · silu(gate), with silu' = σ · (1 + gate · (1 − σ)).
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], gate: &[f32], up: &[f32], g: &[f32]) {
    dispatch(
        #[inline(always)]
        || {
            for i in 0..gate.len().min(dgate.len()).min(dup.len()) {
                let x = gate[i];
                let sig = 1.0 / (1.0 + exp(-x));
                dgate[i] = g[i] * up[i] * (sig * (1.0 + x * (1.0 - sig)));
                dup[i] = g[i] * (x * sig);
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_library_exp_within_two_ten_millionths() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x) as f64, x.exp() as f64);
            worst = worst.max((ours - libm).abs() / libm);
            x += 0.001_37;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1e4), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn the_slice_forms_agree_with_the_scalar_one() {
        let xs: Vec<f32> = (0..1037)
            .map(|i| ((i * 7919) % 2000) as f32 / 50.0 - 30.0)
            .collect();
        let mut ys = xs.clone();
        let sum = exp_shifted_sum(&mut ys, 2.5);
        let reference: Vec<f32> = xs.iter().map(|&x| exp(x - 2.5)).collect();
        assert_eq!(
            ys, reference,
            "the vector path computes what the scalar one does"
        );
        let total: f64 = reference.iter().map(|&v| v as f64).sum();
        assert!(((sum as f64) - total).abs() < 1e-5 * total);
        assert!(((sum_exp_shifted(&xs, 2.5) as f64) - total).abs() < 1e-5 * total);
        let (gate, up) = (&xs[..500], &xs[500..1000]);
        let mut out = vec![0f32; 500];
        swiglu(&mut out, gate, up);
        for i in 0..500 {
            let want = gate[i] / (1.0 + (-gate[i]).exp()) * up[i];
            assert!((out[i] - want).abs() <= 1e-5 * want.abs().max(1.0), "{i}");
        }
    }
}

#[cfg(test)]
mod speed {
    /// `cargo test --release --lib vec_exp::speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn against_the_library_exp() {
        let mut xs: Vec<f32> = (0..1 << 20).map(|i| -((i % 1000) as f32) / 37.0).collect();
        let started = std::time::Instant::now();
        let mut total = 0f32;
        for _ in 0..50 {
            total += super::exp_shifted_sum(&mut xs.clone(), 0.0);
        }
        let ours = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        for _ in 0..50 {
            for x in xs.iter_mut() {
                *x = x.exp();
                total += *x;
            }
            xs.iter_mut().for_each(|x| *x = x.ln());
        }
        let libm = started.elapsed().as_secs_f64();
        eprintln!("52M exps: vec_exp {ours:.3} s, f32::exp {libm:.3} s (with as many ln) {total}");
    }
}
