//! llama.cpp's CPU arithmetic for quantized weights, for figures that must compare with
//! llama-perplexity's: each activation row is rounded to the weight type's dot-product partner
//! (Q8_0 blocks for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants) and dotted in
//! integers, block by block, as ggml's `mul_mat` does (through candle's `k_quants::matmul`).
//!
//! Why not candle's `QMatMul`: on CPUs with AVX-512 VNNI it repacks Q8_0, Q4_K and Q6_K weights
//! and rounds the activations to Q8_K (one scale per 256 values) even for Q8_0 weights, which
//! moved SmolLM2's perplexity about 0.5% away from llama-perplexity's on the same file.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::Result;

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

/// The weight bytes as blocks of `T` (copied when the bytes are not aligned for `T`).
fn run<T: GgmlType + Clone>(
    bytes: &[u8],
    mkn: (usize, usize, usize),
    x: &[f32],
) -> Result<Vec<f32>> {
    let (m, _, n) = mkn;
    let count = bytes.len() / std::mem::size_of::<T>();
    let copied: Vec<T>;
    let blocks: &[T] = if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) == 0 {
        // SAFETY: the bytes are a QTensor's storage of `count` whole blocks of `T` (a plain
        // repr(C) struct of integers and f16), and the pointer is aligned for `T`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, count) }
    } else {
        copied = (0..count)
            // SAFETY: as above; read_unaligned copies each block out of unaligned bytes.
            .map(|i| unsafe { std::ptr::read_unaligned((bytes.as_ptr() as *const T).add(i)) })
            .collect();
        &copied
    };
    let mut y = vec![0f32; m * n];
    candle_core::quantized::k_quants::matmul(mkn, x, blocks, &mut y)?;
    Ok(y)
}
