//! The AVX-512 VNNI kernel of [`super::interleaved`]: one group of 16 interleaved rows against up
//! to 16 activation rows rounded to 16-bit pairs. Lane r of every vector is row r of the group.
//! Per block: the 16 scales converted by one instruction; the 16 rows' codes widened to i16 pairs
//! once, 16 vectors kept in registers; then for each activation row, 16 multiply-adds of those
//! against its broadcast pairs (`vpdpwssd`) and the block's integer sums scaled to f32 in one
//! multiply-add. Decoding is shared, so a batch of rows costs far less than the rows one by one.
//! Tested against the plain-Rust reference in `interleaved`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::blocks::{Format, BLOCK};
use super::interleaved::{Activations, GROUP, ROWS_AT_ONCE};
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

/// The outputs of one group (`group`: `cols / 32` interleaved blocks of `format`) for the
/// activation rows `acts` (at most [`ROWS_AT_ONCE`]), row r's 16 written to `out[16r..16r + 16]`.
///
/// Per block, the 16 rows' codes are widened once into 16 vectors held in registers, then each
/// activation row runs its 16 multiply-adds against them: R rows cost little more decoding than
/// one. Each row's arithmetic is the same whatever else is in `acts` (integer dots are exact and
/// its f32 steps run in the same order), so a row's result does not depend on its neighbours.
///
/// # Safety
/// The CPU must pass [`available`]; `group` is one whole group of `cols` columns, every row of
/// `acts` was rounded for `format` from a row of `cols`, and `out` holds 16 per row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
pub unsafe fn group_dot(
    format: Format,
    group: &[u8],
    cols: usize,
    acts: &[Activations],
    out: &mut [f32],
) {
    let rows = acts.len();
    assert!(rows <= ROWS_AT_ONCE && out.len() >= GROUP * rows);
    let bb = format.block_bytes();
    let head = if format == Format::Q4_1 {
        4 * GROUP
    } else {
        2 * GROUP
    };
    let low_nibbles = _mm512_set1_epi32(0x000F_000F);
    let mut acc = [_mm512_setzero_ps(); ROWS_AT_ONCE];
    let mut offsets = [_mm512_setzero_ps(); ROWS_AT_ONCE];
    for b in 0..cols / BLOCK {
        let blk = group.as_ptr().add(b * GROUP * bb);
        for line in (0..GROUP * bb).step_by(64) {
            prefetch(blk.add(line));
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let m = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(2 * GROUP) as *const __m256i));
        let codes = blk.add(head);
        // Weight pair p of the 16 rows as i16 pairs, one vector each, decoded once per block.
        let weights: [__m512i; 16] = if format == Format::Q8_0 {
            // Chunk p: row r's weights 2p, 2p+1 as two bytes → two i16 in lane r.
            std::array::from_fn(|p| {
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(codes.add(p * 32) as *const __m256i))
            })
        } else {
            // Chunk j: row r's byte j, low nibble weight j, high nibble weight j+16 →
            // lane r = 0x000H_000L, the i16 pair (L, H).
            std::array::from_fn(|j| {
                let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.add(j * 16) as *const __m128i));
                _mm512_ternarylogic_epi32::<A_OR_B_AND_C>(
                    v,
                    _mm512_slli_epi32::<12>(v),
                    low_nibbles,
                )
            })
        };
        for (r, a) in acts.iter().enumerate() {
            let x = a.pairs.as_ptr().add(b * 16);
            // Two independent chains of multiply-adds.
            let (mut dot0, mut dot1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for p in (0..16).step_by(2) {
                dot0 = dpwssd(dot0, weights[p], x.add(p));
                dot1 = dpwssd(dot1, weights[p + 1], x.add(p + 1));
            }
            let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(dot0, dot1));
            let ds = _mm512_mul_ps(d, _mm512_set1_ps(a.scales[b]));
            acc[r] = _mm512_fmadd_ps(ds, sums, acc[r]);
            match format {
                Format::Q4_1 => {
                    offsets[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.sums[b]), offsets[r]);
                }
                Format::Q4_0 => {
                    offsets[r] = _mm512_fmadd_ps(d, _mm512_set1_ps(-8.0 * a.sums[b]), offsets[r]);
                }
                _ => {}
            }
        }
    }
    for r in 0..rows {
        _mm512_storeu_ps(
            out.as_mut_ptr().add(GROUP * r),
            _mm512_add_ps(acc[r], offsets[r]),
        );
    }
}

/// `acc + Σ pairs (w · *x)` with `*x` broadcast to every lane, as the one instruction
/// `vpdpwssd` with an embedded broadcast. Written out because LLVM otherwise splits it into a
/// multiply and an add, which costs two vector ports instead of one.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd(acc: __m512i, w: __m512i, x: *const i32) -> __m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {w}, dword ptr [{x}]{{1to16}}",
        acc = inout(zmm_reg) acc,
        w = in(zmm_reg) w,
        x = in(reg) x,
        options(pure, readonly, nostack, preserves_flags),
    );
    acc
}
