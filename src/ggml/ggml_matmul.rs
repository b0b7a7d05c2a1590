//! llama.cpp's CPU arithmetic for quantized weights, for figures that must compare with
//! llama-perplexity's: each activation row is rounded to the weight type's dot-product partner
//! (Q8_0 blocks for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants) and dotted in
//! integers, block by block, as ggml's `mul_mat` does (candle's `vec_dot` kernels, one per row pair;
//! `ggml::ggml_dot32` for Q4_1/Q5_0/Q5_1, which candle dots with scalar code).
//!
//! Why not candle's `QMatMul`: on CPUs with AVX-512 VNNI it repacks Q8_0, Q4_K and Q6_K weights
//! and rounds the activations to Q8_K (one scale per 256 values) even for Q8_0 weights, which
//! moved SmolLM2's perplexity about 0.5% away from llama-perplexity's on the same file.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::Result;
use crate::ggml::ggml_dot32::{Dot32, Unpacked};

/// `y[r][j] = Σ_i w[j][i] · x[r][i]` for the quantized `w` (n, k) and `x` (`m` rows of k) with
/// ggml's activation rounding; None for types without block quantization (F32, F16, BF16).
pub fn matmul(w: &QTensor, x: &[f32], m: usize) -> Result<Option<Vec<f32>>> {
    let (n, k) = w.shape().dims2()?;
    let data = w.data()?;
    let y = match w.dtype() {
        GgmlDType::Q4_0 => run::<BlockQ4_0>(&data, (m, k, n), x)?,
        GgmlDType::Q4_1 => run::<BlockQ4_1>(&data, (m, k, n), x)?,
        GgmlDType::Q5_0 => run::<BlockQ5_0>(&data, (m, k, n), x)?,
        GgmlDType::Q5_1 => run::<BlockQ5_1>(&data, (m, k, n), x)?,
        GgmlDType::Q8_0 => run::<BlockQ8_0>(&data, (m, k, n), x)?,
        GgmlDType::Q2K => run::<BlockQ2K>(&data, (m, k, n), x)?,
        GgmlDType::Q3K => run::<BlockQ3K>(&data, (m, k, n), x)?,
        GgmlDType::Q4K => run::<BlockQ4K>(&data, (m, k, n), x)?,
        GgmlDType::Q5K => run::<BlockQ5K>(&data, (m, k, n), x)?,
        GgmlDType::Q6K => run::<BlockQ6K>(&data, (m, k, n), x)?,
        _ => return Ok(None),
    };
    Ok(Some(y))
}

fn run<T: GgmlType>(bytes: &[u8], mkn: (usize, usize, usize), x: &[f32]) -> Result<Vec<f32>> {
    products(&blocks_of::<T>(bytes), mkn, x)
}

/// The weight bytes as blocks of `T` (copied when the bytes are not aligned for `T`).
fn blocks_of<T: GgmlType>(bytes: &[u8]) -> Cow<'_, [T]> {
    let count = bytes.len() / std::mem::size_of::<T>();
    if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) == 0 {
        // SAFETY: the bytes are a QTensor's storage of `count` whole blocks of `T` (a plain
        // repr(C) struct of integers and f16), and the pointer is aligned for `T`.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, count) })
    } else {
        Cow::Owned(
            (0..count)
                // SAFETY: as above; read_unaligned copies each block out of unaligned bytes.
                .map(|i| unsafe { std::ptr::read_unaligned((bytes.as_ptr() as *const T).add(i)) })
                .collect(),
        )
    }
}

/// The bytes of ggml blocks (candle's `repr(C)` structs of integers and f16, without padding).
fn as_bytes<U: GgmlType>(blocks: &[U]) -> &[u8] {
    // SAFETY: every byte of a block is an initialized integer or f16 field (candle asserts each
    // block's size equals the sum of its fields'), and u8 has no alignment requirement.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    }
}

/// Rows of activations taken together, so each weight row is read once per band.
const ROW_BAND: usize = 8;

/// ggml's `mul_mat` on the CPU threads (rayon's pool; candle's own matmul would use its barrier
/// pool, which tunelab's command line keeps to one thread): each activation row rounded to
/// `T::VecDotType` blocks, then one `vec_dot` per (row, weight row), summed as ggml sums it.
fn products<T: GgmlType>(w: &[T], (m, k, n): (usize, usize, usize), x: &[f32]) -> Result<Vec<f32>> {
    let per_row = k / T::BLCK_SIZE;
    if k % T::BLCK_SIZE != 0 || x.len() != m * k || w.len() != n * per_row {
        return Err(crate::Error::msg(format!(
            "ggml matmul: weights of {} blocks of {} for ({m} x {k}) · ({n} x {k})ᵀ",
            w.len(),
            T::BLCK_SIZE
        )));
    }
    let mut xq = vec![T::VecDotType::zeros(); m * per_row];
    xq.par_chunks_mut(per_row.max(1))
        .zip(x.par_chunks(k.max(1)))
        .for_each(|(q, row)| T::VecDotType::from_float(row, q));
    let weight_row = |j: usize| &w[j * per_row..(j + 1) * per_row];
    let act_row = |r: usize| &xq[r * per_row..(r + 1) * per_row];
    // Q4_1/Q5_0/Q5_1: each weight row unpacked once, then dotted with every activation row.
    let kind = Dot32::of(T::DTYPE);
    let mut activations = Unpacked::default();
    if let Some(kind) = kind {
        activations.unpack_activations(kind, as_bytes(&xq));
    }
    let prepare = |j: usize, unpacked: &mut Unpacked| {
        if let Some(kind) = kind {
            unpacked.unpack_weights(kind, as_bytes(weight_row(j)));
        }
    };
    let dot = |j: usize, unpacked: &Unpacked, r: usize| match kind {
        Some(kind) => unpacked.dot(kind, &activations, r),
        None => T::vec_dot(k, weight_row(j), act_row(r)),
    };
    let mut y = vec![0f32; m * n];
    if m >= ROW_BAND * rayon::current_num_threads() {
        y.par_chunks_mut(ROW_BAND * n).enumerate().for_each_init(
            Unpacked::default,
            |unpacked, (band, out)| {
                for j in 0..n {
                    prepare(j, unpacked);
                    for (r, o) in out.chunks_mut(n).enumerate() {
                        o[j] = dot(j, unpacked, band * ROW_BAND + r);
                    }
                }
            },
        );
    } else {
        // Few rows (generation): the weight rows are split instead, into (n, m), then turned.
        let mut yt = vec![0f32; n * m];
        yt.par_chunks_mut(m * 64).enumerate().for_each_init(
            Unpacked::default,
            |unpacked, (c, out)| {
                for (i, o) in out.chunks_mut(m).enumerate() {
                    prepare(c * 64 + i, unpacked);
                    for (r, v) in o.iter_mut().enumerate() {
                        *v = dot(c * 64 + i, unpacked, r);
                    }
                }
            },
        );
        for (j, col) in yt.chunks(m).enumerate() {
            for (r, v) in col.iter().enumerate() {
                y[r * n + j] = *v;
            }
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A (rows, cols) matrix of smooth, sign-changing values.
    fn values(rows: usize, cols: usize, seed: f32) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i as f32 * 0.37 + seed).sin() * 1.7 + (i as f32 * 0.011).cos()) * 0.5)
            .collect()
    }

    /// Every block type, at a batch (row bands) and at one row (weight rows split): the products
    /// equal candle's `k_quants::matmul` (the same kernels) and are near the dequantized product.
    #[test]
    fn products_equal_candles_matmul_and_the_dequantized_product() {
        let (k, n) = (512, 40);
        let w = values(n, k, 0.3);
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&wt, dtype).unwrap();
            let dense: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for m in [1, 37] {
                let x = values(m, k, 1.1);
                let y = matmul(&q, &x, m).unwrap().unwrap();
                let candle = candle_matmul(&q, &x, m);
                for (a, b) in y.iter().zip(&candle) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{dtype:?}: {a} vs {b}"
                    );
                }
                let mut err = 0f32;
                let mut scale = 0f32;
                for r in 0..m {
                    for j in 0..n {
                        let exact: f32 = (0..k).map(|i| dense[j * k + i] * x[r * k + i]).sum();
                        err = err.max((y[r * n + j] - exact).abs());
                        scale = scale.max(exact.abs());
                    }
                }
                // The activations are rounded to 8 bits: about 1% of the largest product.
                assert!(
                    err < 0.02 * scale,
                    "{dtype:?} m {m}: error {err} of {scale}"
                );
            }
        }
    }

    fn candle_matmul(q: &QTensor, x: &[f32], m: usize) -> Vec<f32> {
        use candle_core::quantized::k_quants::matmul as cm;
        let (n, k) = q.shape().dims2().unwrap();
        let data = q.data().unwrap();
        let mut y = vec![0f32; m * n];
        fn go<T: GgmlType>(d: &[u8], mkn: (usize, usize, usize), x: &[f32], y: &mut [f32]) {
            cm(mkn, x, &blocks_of::<T>(d), y).unwrap();
        }
        let mkn = (m, k, n);
        match q.dtype() {
            GgmlDType::Q4_0 => go::<BlockQ4_0>(&data, mkn, x, &mut y),
            GgmlDType::Q4_1 => go::<BlockQ4_1>(&data, mkn, x, &mut y),
            GgmlDType::Q5_0 => go::<BlockQ5_0>(&data, mkn, x, &mut y),
            GgmlDType::Q5_1 => go::<BlockQ5_1>(&data, mkn, x, &mut y),
            GgmlDType::Q8_0 => go::<BlockQ8_0>(&data, mkn, x, &mut y),
            GgmlDType::Q2K => go::<BlockQ2K>(&data, mkn, x, &mut y),
            GgmlDType::Q3K => go::<BlockQ3K>(&data, mkn, x, &mut y),
            GgmlDType::Q4K => go::<BlockQ4K>(&data, mkn, x, &mut y),
            GgmlDType::Q5K => go::<BlockQ5K>(&data, mkn, x, &mut y),
            _ => go::<BlockQ6K>(&data, mkn, x, &mut y),
        }
        y
    }
}
