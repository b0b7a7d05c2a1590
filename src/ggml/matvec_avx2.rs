//! AVX2/FMA row-dot kernels for Q4_0, Q4_1 and Q8_0 blocks against f32 activations: the same
//! arithmetic as the portable `row_dot` (`scale·Σ code·x + offset·Σ x` per block), with the block
//! decode written in vector instructions (the compiler leaves it scalar). Tested against the
//! portable kernel and the scalar reference.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::{f16_at, BLOCK};
use super::matvec_avx512::prefetch;

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// 8 unsigned bytes → 8 floats.
#[target_feature(enable = "avx2,fma")]
unsafe fn u8x8_to_f32(bytes: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))
}

/// One row of Q4_0 (`with_min = false`, 18-byte blocks) or Q4_1 (20-byte blocks) · x.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `row` holds whole blocks and `x`/`sums` match it.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn row_dot_q4(row: &[u8], x: &[f32], sums: &[f32], with_min: bool) -> f32 {
    let block_bytes = if with_min { 20 } else { 18 };
    let qs_at = if with_min { 4 } else { 2 };
    let mask = _mm_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for (b, block) in row.chunks_exact(block_bytes).enumerate() {
        prefetch(block.as_ptr());
        let d = f16_at(block, 0);
        let m = if with_min { f16_at(block, 2) } else { -8.0 * d };
        let qs = _mm_loadu_si128(block.as_ptr().add(qs_at) as *const __m128i);
        let low = _mm_and_si128(qs, mask); // codes 0..16
        let high = _mm_and_si128(_mm_srli_epi16(qs, 4), mask); // codes 16..32
        let xb = x.as_ptr().add(b * BLOCK);
        let mut dot = _mm256_mul_ps(u8x8_to_f32(low), _mm256_loadu_ps(xb));
        dot = _mm256_fmadd_ps(
            u8x8_to_f32(_mm_srli_si128(low, 8)),
            _mm256_loadu_ps(xb.add(8)),
            dot,
        );
        dot = _mm256_fmadd_ps(u8x8_to_f32(high), _mm256_loadu_ps(xb.add(16)), dot);
        dot = _mm256_fmadd_ps(
            u8x8_to_f32(_mm_srli_si128(high, 8)),
            _mm256_loadu_ps(xb.add(24)),
            dot,
        );
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), dot, acc);
        offsets += m * sums[b];
    }
    hsum(acc) + offsets
}

/// One row of Q8_0 (34-byte blocks) · x.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `row` holds whole blocks and `x` matches it.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn row_dot_q8(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, block) in row.chunks_exact(34).enumerate() {
        prefetch(block.as_ptr());
        let d = f16_at(block, 0);
        let qs = block.as_ptr().add(2);
        let xb = x.as_ptr().add(b * BLOCK);
        let mut dot = _mm256_setzero_ps();
        for g in 0..4 {
            let bytes = _mm_loadl_epi64(qs.add(8 * g) as *const __m128i);
            let codes = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            dot = _mm256_fmadd_ps(codes, _mm256_loadu_ps(xb.add(8 * g)), dot);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), dot, acc);
    }
    hsum(acc)
}
