//! The AVX-512 VNNI kernel of [`super::interleaved`]: one group of 16 interleaved rows against one
//! activation row rounded to 16-bit pairs. Lane r of every vector is row r. Per block: the 16
//! scales converted by one instruction; per pair of weight positions, the 16 rows' codes widened
//! to i16 pairs and multiplied-and-added against the broadcast activation pair (`vpdpwssd`); then
//! the block's integer sums scaled to f32 in one multiply-add. Tested against the plain-Rust
//! reference in `interleaved`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::{Format, BLOCK};
use super::interleaved::{Activations, GROUP};
use super::matvec_avx512::prefetch;

/// Whether this CPU can run [`group_dot`].
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("f16c")
}

/// `(a | b) & c` for `_mm512_ternarylogic_epi32` (bit `4a + 2b + c` of the table).
const A_OR_B_AND_C: i32 = 0xA8;

/// The 16 outputs of one group (`group`: `cols / 32` interleaved blocks of `format`) for one
/// activation row `a`, written to `out[..16]`.
///
/// # Safety
/// The CPU must pass [`available`]; `group` is one whole group of `cols` columns and `a` was
/// rounded for `format` from a row of `cols`; `out` holds 16 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
pub unsafe fn group_dot(
    format: Format,
    group: &[u8],
    cols: usize,
    a: &Activations,
    out: &mut [f32],
) {
    let bb = format.block_bytes();
    let head = if format == Format::Q4_1 {
        4 * GROUP
    } else {
        2 * GROUP
    };
    let low_nibbles = _mm512_set1_epi32(0x000F_000F);
    let mut acc = _mm512_setzero_ps();
    let mut offsets = _mm512_setzero_ps();
    for b in 0..cols / BLOCK {
        let blk = group.as_ptr().add(b * GROUP * bb);
        for line in (0..GROUP * bb).step_by(64) {
            prefetch(blk.add(line));
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let pairs = a.pairs.as_ptr().add(b * 16);
        let codes = blk.add(head);
        let (mut dot0, mut dot1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        if format == Format::Q8_0 {
            // Chunk p: row r's weights 2p, 2p+1 as two bytes → two i16 in lane r.
            for p in (0..16).step_by(2) {
                let w0 =
                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(codes.add(p * 32) as *const __m256i));
                let w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                    codes.add((p + 1) * 32) as *const __m256i
                ));
                dot0 = _mm512_dpwssd_epi32(dot0, w0, _mm512_set1_epi32(*pairs.add(p)));
                dot1 = _mm512_dpwssd_epi32(dot1, w1, _mm512_set1_epi32(*pairs.add(p + 1)));
            }
        } else {
            // Chunk j: row r's byte j, low nibble weight j, high nibble weight j+16 →
            // lane r = 0x000H_000L, the i16 pair (L, H).
            let widen = |j: usize| {
                let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.add(j * 16) as *const __m128i));
                _mm512_ternarylogic_epi32::<A_OR_B_AND_C>(
                    v,
                    _mm512_slli_epi32::<12>(v),
                    low_nibbles,
                )
            };
            for j in (0..16).step_by(2) {
                dot0 = _mm512_dpwssd_epi32(dot0, widen(j), _mm512_set1_epi32(*pairs.add(j)));
                dot1 =
                    _mm512_dpwssd_epi32(dot1, widen(j + 1), _mm512_set1_epi32(*pairs.add(j + 1)));
            }
        }
        let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(dot0, dot1));
        let ds = _mm512_mul_ps(d, _mm512_set1_ps(a.scales[b]));
        acc = _mm512_fmadd_ps(ds, sums, acc);
        match format {
            Format::Q4_1 => {
                let m = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(2 * GROUP) as *const __m256i));
                offsets = _mm512_fmadd_ps(m, _mm512_set1_ps(a.sums[b]), offsets);
            }
            Format::Q4_0 => {
                offsets = _mm512_fmadd_ps(d, _mm512_set1_ps(-8.0 * a.sums[b]), offsets);
            }
            _ => {}
        }
    }
    _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(acc, offsets));
}
