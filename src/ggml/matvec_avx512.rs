//! AVX-512 row-dot kernels for Q4_0, Q4_1 and Q8_0 blocks against f32 activations: the
//! arithmetic of the portable `row_dot` (`scale·Σ code·x + offset·Σ x` per block) with a whole
//! 32-weight block in two 16-lane registers and the f16 scales converted by F16C. Generation spends
//! most of its time here (one weight row per output, each weight read once per token). Chosen at
//! run time on CPUs with AVX-512F/BW; tested against the portable kernel and the scalar reference.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::BLOCK;

/// Whether this CPU can run these kernels.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("f16c")
}

/// The f16 at byte `i` of `block`, converted by the F16C instruction.
#[inline(always)]
unsafe fn f16_at(block: *const u8, i: usize) -> f32 {
    let h = std::ptr::read_unaligned(block.add(i) as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// How far ahead of the block being decoded its row data is prefetched. The hardware prefetcher
/// alone left the kernel stalled on weight loads: generation on SmolLM2-Q4_1 went from ~38 to
/// ~55 tokens/s with 1–4 KiB (measured; 256 B gained nothing).
pub const PREFETCH_BYTES: usize = 2048;

/// Ask for the cache line `PREFETCH_BYTES` ahead of `p` (a hint: never faults, so running past
/// the end of the weights is harmless; `wrapping_add` keeps the address arithmetic defined).
#[inline(always)]
pub unsafe fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
}

/// One row of Q4_0 (`with_min = false`, 18-byte blocks) or Q4_1 (20-byte blocks) · x.
///
/// # Safety
/// The CPU must pass [`available`]; `row` holds whole blocks and `x`/`sums` match it.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
pub unsafe fn row_dot_q4(row: &[u8], x: &[f32], sums: &[f32], with_min: bool) -> f32 {
    let block_bytes = if with_min { 20 } else { 18 };
    let qs_at = if with_min { 4 } else { 2 };
    let mask = _mm_set1_epi8(0x0F);
    let mut acc = _mm512_setzero_ps();
    let mut offsets = 0f32;
    for (b, block) in row.chunks_exact(block_bytes).enumerate() {
        let p = block.as_ptr();
        prefetch(p);
        let d = f16_at(p, 0);
        let m = if with_min { f16_at(p, 2) } else { -8.0 * d };
        let qs = _mm_loadu_si128(p.add(qs_at) as *const __m128i);
        let low = _mm_and_si128(qs, mask); // codes of weights 0..16
        let high = _mm_and_si128(_mm_srli_epi16(qs, 4), mask); // weights 16..32
        let xb = x.as_ptr().add(b * BLOCK);
        let low = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low));
        let high = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high));
        let dot = _mm512_fmadd_ps(
            high,
            _mm512_loadu_ps(xb.add(16)),
            _mm512_mul_ps(low, _mm512_loadu_ps(xb)),
        );
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), dot, acc);
        offsets += m * sums[b];
    }
    _mm512_reduce_add_ps(acc) + offsets
}

/// One row of Q8_0 (34-byte blocks) · x.
///
/// # Safety
/// The CPU must pass [`available`]; `row` holds whole blocks and `x` matches it.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
pub unsafe fn row_dot_q8(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm512_setzero_ps();
    for (b, block) in row.chunks_exact(34).enumerate() {
        let p = block.as_ptr();
        prefetch(p);
        let d = f16_at(p, 0);
        let xb = x.as_ptr().add(b * BLOCK);
        let lo = _mm_loadu_si128(p.add(2) as *const __m128i);
        let hi = _mm_loadu_si128(p.add(18) as *const __m128i);
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
        let dot = _mm512_fmadd_ps(
            hi,
            _mm512_loadu_ps(xb.add(16)),
            _mm512_mul_ps(lo, _mm512_loadu_ps(xb)),
        );
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), dot, acc);
    }
    _mm512_reduce_add_ps(acc)
}
