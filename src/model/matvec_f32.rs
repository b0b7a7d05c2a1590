//! Generation's product for dense f32 weights: a few activation rows against an (out, in) weight,
//! one dot product per weight row, rows in parallel. candle's matmul hands these shapes to a GEMM
//! built for large blocks, which read SmolLM2's f32 weights at about half the memory speed a
//! plain row-by-row dot reaches here; prompts (many rows) keep the GEMM.
//!
//! The dot product is written once with 16 independent partial sums (so the compiler can
//! vectorize it) and compiled for AVX-512 and for AVX2+FMA, chosen at run time.

use rayon::prelude::*;

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Below this many weights (times activation rows) the product runs on the calling thread.
const SERIAL_WEIGHTS: usize = 1 << 15;

/// Partial sums kept apart (float addition is not associative, so the compiler only vectorizes
/// a dot product written with separate lanes).
const LANES: usize = 16;

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

/// `a · b` with the widest vectors this CPU has (within `TUNELAB_SIMD`'s cap).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::ggml::matvec::{simd, Simd};
        match simd() {
            // SAFETY: simd() reports only features this CPU has.
            Simd::Avx512 => return unsafe { dot_avx512(a, b) },
            Simd::Avx2 => return unsafe { dot_avx2(a, b) },
            Simd::Portable => {}
        }
    }
    dot_generic(a, b)
}

/// `y[r][j] = Σ_i w[j][i] · x[r][i]` for `w` (`n` rows of `k`) and `x` (`m` rows of `k`);
/// returns y as `m × n`, row-major.
pub fn matmul(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let mut y_t = vec![0f32; n * m]; // n × m: each task owns whole weight rows
    let task = |(t, out): (usize, &mut [f32])| {
        for (i, ys) in out.chunks_exact_mut(m).enumerate() {
            let row = t * ROWS_PER_TASK + i;
            let wr = &w[row * k..(row + 1) * k];
            for (r, y) in ys.iter_mut().enumerate() {
                *y = dot(wr, &x[r * k..(r + 1) * k]);
            }
        }
    };
    if n * k * m < SERIAL_WEIGHTS {
        y_t.chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(task);
    } else {
        y_t.par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(task);
    }
    crate::ggml::matvec::transpose(y_t, n, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_a_plain_sum_in_f64() {
        let (n, k, m) = (70, 200, 3);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let y = matmul(&w, n, k, &x, m);
        for r in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|i| w[j * k + i] as f64 * x[r * k + i] as f64)
                    .sum();
                let size: f64 = (0..k)
                    .map(|i| (w[j * k + i] as f64 * x[r * k + i] as f64).abs())
                    .sum();
                let got = y[r * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * size,
                    "row {r}, output {j}: {got} vs {want}"
                );
            }
        }
    }
}
