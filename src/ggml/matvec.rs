//! Quantized weights × f32 activations without rounding the activations: each block is decoded
//! and dotted with the activations in f32 (`w·x = scale·Σ code·x + offset·Σ x`), rows in parallel.
//! candle's quantized matmul first rounds the activations to 8-bit blocks, which costs a small
//! model like SmolLM2 its answers; this path gives the dequantized model's results from the
//! quantized file, and reads 4–5 bits per weight instead of 32 during generation.
//!
//! The portable body is written once and compiled twice: plainly, and with AVX2/FMA enabled (chosen
//! at run time); Q4_0, Q4_1 and Q8_0 rows on AVX2 CPUs use the hand-vectorized decode in
//! `matvec_avx2` instead. Both are tested against the scalar reference.

use rayon::prelude::*;

use super::blocks::{self, BlockFormat, Format, BLOCK};

/// Rows of the output computed per parallel task.
const ROWS_PER_TASK: usize = 32;

/// `y[m][n] = Σ_k w[n][k] · x[m][k]` for `w` (`n_rows` rows of `format` blocks, `k` columns) and
/// `x` (`m` rows of `k`); returns y as `m × n_rows`, row-major.
pub fn matmul(format: Format, w: &[u8], n_rows: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    match format {
        Format::Q4_0 => kernel::<blocks::Q4_0>(w, n_rows, k, x, m, format),
        Format::Q4_1 => kernel::<blocks::Q4_1>(w, n_rows, k, x, m, format),
        Format::Q5_0 => kernel::<blocks::Q5_0>(w, n_rows, k, x, m, format),
        Format::Q5_1 => kernel::<blocks::Q5_1>(w, n_rows, k, x, m, format),
        Format::Q8_0 => kernel::<blocks::Q8_0>(w, n_rows, k, x, m, format),
    }
}

/// What one parallel task needs: weight rows `first..first + out.len() / m`.
struct Task<'a> {
    w: &'a [u8],
    row_bytes: usize,
    first: usize,
    x: &'a [f32],
    k: usize,
    sums: &'a [f32],
    m: usize,
}

/// The vector instructions the kernels use, chosen once per process: AVX-512 (F, BW, F16C), else
/// AVX2 + FMA, else portable code. `TUNELAB_SIMD=avx2|portable` caps it (for benchmarks and for
/// comparing paths on one machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    Portable,
    Avx2,
    Avx512,
}

/// The best [`Simd`] level this CPU supports, capped by `TUNELAB_SIMD`.
pub fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[allow(unused_mut)]
        let mut level = Simd::Portable;
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                level = Simd::Avx2;
                if super::matvec_avx512::available() {
                    level = Simd::Avx512;
                }
            }
        }
        let cap = match std::env::var("TUNELAB_SIMD").as_deref() {
            Ok("portable") => Simd::Portable,
            Ok("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        level.min(cap)
    })
}

/// Each weight row of a task dotted with each activation row by `dot(row, x, sums)`.
#[inline(always)]
fn rows(t: &Task, out: &mut [f32], dot: impl Fn(&[u8], &[f32], &[f32]) -> f32) {
    let blocks = t.k / BLOCK;
    for (i, out_row) in out.chunks_exact_mut(t.m).enumerate() {
        let n = t.first + i;
        let row = &t.w[n * t.row_bytes..(n + 1) * t.row_bytes];
        for (r, y) in out_row.iter_mut().enumerate() {
            *y = dot(
                row,
                &t.x[r * t.k..(r + 1) * t.k],
                &t.sums[r * blocks..(r + 1) * blocks],
            );
        }
    }
}

/// One row · x with the hand-vectorized kernels of `level` for Q4_0, Q4_1 and Q8_0; `None` for
/// other formats and levels.
#[cfg(target_arch = "x86_64")]
fn vector_dot(level: Simd, format: Format, row: &[u8], x: &[f32], sums: &[f32]) -> Option<f32> {
    let with_min = format == Format::Q4_1;
    // SAFETY: `level` is at most what `simd()` detected on this CPU; the callers pass whole
    // blocks of `format` with matching activations and block sums.
    unsafe {
        match (level, format) {
            (Simd::Avx512, Format::Q8_0) => Some(super::matvec_avx512::row_dot_q8(row, x)),
            (Simd::Avx512, Format::Q4_0 | Format::Q4_1) => {
                Some(super::matvec_avx512::row_dot_q4(row, x, sums, with_min))
            }
            (Simd::Avx2, Format::Q8_0) => Some(super::matvec_avx2::row_dot_q8(row, x)),
            (Simd::Avx2, Format::Q4_0 | Format::Q4_1) => {
                Some(super::matvec_avx2::row_dot_q4(row, x, sums, with_min))
            }
            _ => None,
        }
    }
}

/// Compute one task's outputs: hand-vectorized rows for Q4_0/Q4_1/Q8_0 on AVX2/AVX-512 CPUs, else
/// the portable body (compiled for AVX2 where available).
fn run_task<F: BlockFormat>(t: &Task, out: &mut [f32], format: Format) {
    #[cfg(target_arch = "x86_64")]
    {
        let level = simd();
        if level >= Simd::Avx2 {
            if matches!(format, Format::Q4_0 | Format::Q4_1 | Format::Q8_0) {
                return rows(t, out, |row, x, sums| {
                    vector_dot(level, format, row, x, sums).unwrap_or_default()
                });
            }
            // SAFETY: the CPU supports the features the copy was compiled for.
            return unsafe { run_task_avx2::<F>(t, out) };
        }
    }
    run_task_generic::<F>(t, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_task_avx2<F: BlockFormat>(t: &Task, out: &mut [f32]) {
    run_task_generic::<F>(t, out)
}

#[inline(always)]
fn run_task_generic<F: BlockFormat>(t: &Task, out: &mut [f32]) {
    rows(t, out, row_dot::<F>)
}

/// Independent partial sums per row: float addition is not associative, so the compiler only
/// vectorizes a dot product that is written with separate lanes.
const LANES: usize = 8;

/// One weight row dotted with one activation row: Σ_blocks scale·Σ code·x + offset·Σ x.
#[inline(always)]
fn row_dot<F: BlockFormat>(row: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    let mut codes = [0f32; BLOCK];
    let mut acc = [0f32; LANES];
    let mut offsets = 0f32;
    for ((block, xb), s) in row
        .chunks_exact(F::BYTES)
        .zip(x.chunks_exact(BLOCK))
        .zip(sums)
    {
        let (scale, offset) = F::decode(block, &mut codes);
        let mut dot = [0f32; LANES];
        for (c, xv) in codes.chunks_exact(LANES).zip(xb.chunks_exact(LANES)) {
            for l in 0..LANES {
                dot[l] += c[l] * xv[l];
            }
        }
        for l in 0..LANES {
            acc[l] += scale * dot[l];
        }
        offsets += offset * s;
    }
    acc.iter().sum::<f32>() + offsets
}

fn kernel<F: BlockFormat>(
    w: &[u8],
    n_rows: usize,
    k: usize,
    x: &[f32],
    m: usize,
    format: Format,
) -> Vec<f32> {
    // Σ x per block, per activation row (for the offset term).
    let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
    let mut y_t = vec![0f32; n_rows * m]; // n_rows × m, so each task owns whole weight rows
    y_t.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            let t = Task {
                w,
                row_bytes: k / BLOCK * F::BYTES,
                first: task * ROWS_PER_TASK,
                x,
                k,
                sums: &sums,
                m,
            };
            run_task::<F>(&t, out, format);
        });
    transpose(y_t, n_rows, m)
}

/// `y_t` (`n` × `m`, row-major: what tasks that own whole weight rows produce) as `m` × `n`.
pub fn transpose(y_t: Vec<f32>, n: usize, m: usize) -> Vec<f32> {
    if m == 1 {
        return y_t;
    }
    let mut y = vec![0f32; m * n];
    for j in 0..n {
        for r in 0..m {
            y[r * n + j] = y_t[j * m + r];
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::blocks::{self, dequantize_row};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// The fused kernel vs dequantize-then-dot (the reference); only summation order differs, so
    /// the error is measured against Σ|w·x| (the size of what cancels), not the result.
    const REL_TOL: f32 = 1e-5;

    #[test]
    fn portable_rows_match_every_vectorized_kernel_this_cpu_has() {
        let k = 256;
        let w = Tensor::randn(0f32, 1.0, (2, k), &Device::Cpu).unwrap();
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, k, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let data = q.data().unwrap();
            let format = Format::of(dtype).unwrap();
            let row = &data[..k / BLOCK * format.block_bytes()];
            let portable = match format {
                Format::Q4_0 => row_dot::<blocks::Q4_0>(row, &x, &sums),
                Format::Q4_1 => row_dot::<blocks::Q4_1>(row, &x, &sums),
                _ => row_dot::<blocks::Q8_0>(row, &x, &sums),
            };
            let close = |v: f32| (portable - v).abs() <= 1e-4 * portable.abs().max(1.0);
            let fast = matmul(format, &data, 2, k, &x, 1)[0];
            assert!(
                close(fast),
                "{dtype:?} via {:?}: {portable} vs {fast}",
                simd()
            );
            #[cfg(target_arch = "x86_64")]
            for level in [Simd::Avx2, Simd::Avx512] {
                if level <= simd() {
                    let v = vector_dot(level, format, row, &x, &sums).unwrap();
                    assert!(close(v), "{dtype:?} {level:?}: {portable} vs {v}");
                }
            }
        }
    }

    #[test]
    fn fused_matmul_matches_the_reference_for_every_format() {
        let (n, k, m) = (67, 256, 3);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
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
            let got = matmul(format, &data, n, k, &x, m);
            let row_bytes = k / BLOCK * format.block_bytes();
            let mut worst = 0f32;
            for r in 0..m {
                for j in 0..n {
                    let wr = dequantize_row(format, &data[j * row_bytes..(j + 1) * row_bytes]);
                    let want: f32 = wr
                        .iter()
                        .zip(&x[r * k..(r + 1) * k])
                        .map(|(a, b)| a * b)
                        .sum();
                    let scale: f32 = wr
                        .iter()
                        .zip(&x[r * k..(r + 1) * k])
                        .map(|(a, b)| (a * b).abs())
                        .sum();
                    let rel = (got[r * n + j] - want).abs() / scale;
                    worst = worst.max(rel);
                }
            }
            assert!(
                worst < REL_TOL,
                "{dtype:?}: worst relative difference {worst}"
            );
        }
    }
}
